-- Schema 6: the client addresses (CIDRs, a JSON list) a key may be used from; empty: any.
ALTER TABLE keys ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]';
