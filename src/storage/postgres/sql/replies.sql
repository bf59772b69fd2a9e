SELECT t.i, r.client_id, r.data
FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(u, p, i)
JOIN acks a ON a.user_id = t.u AND a.pos = t.p AND a.expires_at > $3::bigint
JOIN replies r ON r.user_id = t.u AND r.pos = t.p
ORDER BY t.i, r.client_id
