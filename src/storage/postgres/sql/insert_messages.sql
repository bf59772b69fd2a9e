INSERT INTO messages (user_id, pos, client, ns, payload, expires_at, sender, size, ack)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                     $6::bigint[], $7::text[], $8::integer[], $9::boolean[])
