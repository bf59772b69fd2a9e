INSERT INTO payloads (id, event, data, expires_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[])
