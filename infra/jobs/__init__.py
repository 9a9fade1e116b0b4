"""Scripts the backup CronJobs run; the program ships them in ConfigMaps and the tests run the same files."""
