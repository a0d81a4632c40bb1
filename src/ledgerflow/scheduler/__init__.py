"""The cron scheduler: schedules, fire records, misfire and overlap policies."""
