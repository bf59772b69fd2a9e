SELECT o.user_id, o.origin, o.pos
FROM origins o JOIN unnest($1::text[], $2::text[]) AS t(u, origin)
  ON o.user_id = t.u AND o.origin = t.origin
WHERE o.expires_at > $3::bigint
