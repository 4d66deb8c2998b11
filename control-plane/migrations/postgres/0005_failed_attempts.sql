-- Schema 5: the tries of a request before the one that answered it (retries, a fallback's
-- earlier steps), as the filter recorded them: [{"deployment": "...", "error": "rate_limit"}, ...].
-- Billed nothing; kept so a spend row says what the request went through.
ALTER TABLE spend_logs ADD COLUMN failed_attempts TEXT NOT NULL DEFAULT '[]';
