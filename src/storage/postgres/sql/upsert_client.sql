INSERT INTO clients (user_id, client_id, cursor, namespaces, seen_until, polled)
VALUES ($1::text, $2::text, $3::bigint, $4::text[], $5::bigint, true)
ON CONFLICT (user_id, client_id) DO UPDATE
SET cursor = EXCLUDED.cursor, namespaces = EXCLUDED.namespaces,
    seen_until = EXCLUDED.seen_until, polled = true
