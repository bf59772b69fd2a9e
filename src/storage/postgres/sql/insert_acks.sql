INSERT INTO acks (user_id, pos, client, expires_at)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])
