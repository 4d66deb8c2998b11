-- Schema 7: a spend row answered from the response cache (LiteLLM's `cache_hit`): its cost
-- is 0 because no provider was asked, and reports can tell a hit from a free request.
ALTER TABLE spend_logs ADD COLUMN cache_hit BIGINT NOT NULL DEFAULT 0;
