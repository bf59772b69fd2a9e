SELECT s.user_id, s.sender, s.count, s.bytes
FROM senders s JOIN unnest($1::text[], $2::text[]) AS t(u, sender)
  ON s.user_id = t.u AND s.sender = t.sender
