-- The oldest messages of a sender's share of a queue after position $4.
SELECT m.pos, m.expires_at, m.ns, m.client, m.size, m.sender,
       (m.client = '' AND m.pos <= coalesce(
           (SELECT wm FROM watermarks w WHERE w.user_id = m.user_id AND w.ns = m.ns), 0))
       OR (m.client <> '' AND EXISTS (
           SELECT 1 FROM clients c WHERE c.user_id = m.user_id AND c.client_id = m.client
             AND c.cursor >= m.pos AND m.ns = ANY(c.namespaces)))
FROM messages m WHERE m.user_id = $1::text AND m.sender = $2::text AND m.pos > $4::bigint
ORDER BY m.pos LIMIT $3::bigint
