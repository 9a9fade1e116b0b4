"""Who may call, and how often: key file and key ring, JWTs, network rules, rate limits, the audit trail."""
