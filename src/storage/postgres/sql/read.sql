-- What follows the cursor for this client, in its namespaces, unexpired: a range of the
-- user's log by position.
SELECT m.pos, m.ns, p.event, p.data, m.ack
FROM messages m JOIN payloads p ON p.id = m.payload
WHERE m.user_id = $1::text AND m.pos > $2::bigint AND m.expires_at > $3::bigint
  AND m.ns = ANY($4::text[]) AND (m.client = '' OR m.client = $5::text)
ORDER BY m.pos LIMIT $6::bigint
