SELECT a.client, a.expires_at,
       EXISTS (SELECT 1 FROM replies r WHERE r.user_id = a.user_id AND r.pos = a.pos
                 AND r.client_id = $3::text),
       (SELECT count(*) FROM replies r WHERE r.user_id = a.user_id AND r.pos = a.pos)
FROM acks a WHERE a.user_id = $1::text AND a.pos = $2::bigint
