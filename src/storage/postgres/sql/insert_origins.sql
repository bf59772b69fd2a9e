INSERT INTO origins (user_id, origin, pos, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
ON CONFLICT (user_id, origin) DO UPDATE SET pos = EXCLUDED.pos, expires_at = EXCLUDED.expires_at
