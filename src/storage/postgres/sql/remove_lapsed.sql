DELETE FROM clients WHERE user_id = ANY($1::text[]) AND seen_until <= $2::bigint
RETURNING user_id, client_id, polled
