-- The other nodes that need signals about these users, each with the ones it needs.
SELECT node, array_agg(user_id) FROM interest
WHERE user_id = ANY($1::text[]) AND until > $2::bigint AND node <> $3::text
GROUP BY node
