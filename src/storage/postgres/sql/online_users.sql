SELECT DISTINCT user_id FROM clients WHERE user_id = ANY($1::text[]) AND polled
