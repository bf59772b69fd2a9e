INSERT INTO dedup (user_id, client_id, msg_id, seq, owner, outcome, until)
VALUES ($1::text, $2::text, $3::text, nextval('dedup_claims'), 0, $4::text, $5::bigint)
ON CONFLICT (user_id, client_id, msg_id) DO UPDATE
SET outcome = EXCLUDED.outcome, until = EXCLUDED.until
