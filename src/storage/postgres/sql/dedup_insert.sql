INSERT INTO dedup (user_id, client_id, msg_id, seq, owner, outcome, until)
VALUES ($1::text, $2::text, $3::text, nextval('dedup_claims'), $4::bigint, NULL, $5::bigint)
