DELETE FROM payloads WHERE id IN (
    SELECT id FROM payloads WHERE expires_at <= $1::bigint ORDER BY expires_at LIMIT $2::bigint)
