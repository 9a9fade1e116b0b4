"""What outlives a request: the conversation store, the response cache and the Redis link they share."""
