-- A client not seen yet is kept for the presence TTL, as if it had polled (not live).
INSERT INTO clients (user_id, client_id, seen_until) VALUES ($1::text, $2::text, $3::bigint)
ON CONFLICT (user_id, client_id) DO NOTHING
