UPDATE dedup SET until = $5::bigint
WHERE user_id = $1::text AND client_id = $2::text AND msg_id = $3::text
  AND outcome IS NULL AND owner = $4::bigint AND until > $6::bigint
