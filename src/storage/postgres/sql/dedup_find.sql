SELECT owner, outcome, until FROM dedup
WHERE user_id = $1::text AND client_id = $2::text AND msg_id = $3::text
