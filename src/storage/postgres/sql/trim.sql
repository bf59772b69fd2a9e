-- Delivered messages between the last trim and the lowest cursor of the user's polled
-- clients: no client of theirs can read them again.
DELETE FROM messages m
WHERE m.user_id = $1::text AND m.pos > $2::bigint AND m.pos <= $3::bigint AND (
    (m.client = '' AND m.pos <= coalesce(
        (SELECT wm FROM watermarks w WHERE w.user_id = m.user_id AND w.ns = m.ns), 0))
    OR (m.client <> '' AND EXISTS (
        SELECT 1 FROM clients c WHERE c.user_id = m.user_id AND c.client_id = m.client
          AND c.cursor >= m.pos AND m.ns = ANY(c.namespaces))))
