-- The messages an append evicted to make room, all at once.
DELETE FROM messages m USING unnest($1::text[], $2::bigint[]) AS t(u, p)
WHERE m.user_id = t.u AND m.pos = t.p
