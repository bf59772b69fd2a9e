DELETE FROM member_data d USING unnest($1::text[], $2::text[]) AS t(u, c)
WHERE d.user_id = t.u AND d.client_id = t.c
