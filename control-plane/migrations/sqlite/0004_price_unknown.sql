-- Schema 4: a spend row whose deployment had no known price (no model_info prices, not in the
-- built-in table): its cost of 0 is "nobody priced it", not "free", and reports can tell them
-- apart.
ALTER TABLE spend_logs ADD COLUMN price_unknown BIGINT NOT NULL DEFAULT 0;
