UPDATE users SET last_pos = t.last
FROM unnest($1::text[], $2::bigint[]) AS t(u, last) WHERE users.user_id = t.u
