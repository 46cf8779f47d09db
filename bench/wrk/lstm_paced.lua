-- wrk script: POST /lstm like lstm_post.lua, each connection pausing DELAY_MS between its
-- requests, so that a few connections offer a steady rate instead of saturating the stack.
--   DELAY_MS=20 wrk -c40 -d60s -s bench/wrk/lstm_paced.lua http://127.0.0.1:8080/lstm
dofile(debug.getinfo(1, "S").source:sub(2):gsub("lstm_paced.lua$", "lstm_post.lua"))

local pause = tonumber(os.getenv("DELAY_MS") or "0")

delay = function()
  return pause
end
