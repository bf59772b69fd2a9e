DELETE FROM rooms r USING unnest($1::text[], $2::text[]) AS t(u, c)
WHERE r.user_id = t.u AND r.client_id = t.c
