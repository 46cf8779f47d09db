-- wrk script: POST /lstm with varied Chinese review sentences; counts non-2xx answers.
--   wrk -c100 -d20s -s bench/wrk/lstm_post.lua http://127.0.0.1:8000/lstm
local sentences = {
  "这个产品质量很好，我非常喜欢",
  "太差了，用了两天就坏了，退货",
  "物流很快，包装也不错，下次还会再来",
  "客服态度恶劣，再也不买了",
  "一般般吧，没有想象中那么好",
  "性价比很高，推荐购买",
  "屏幕有划痕，而且电池不耐用",
  "酒店位置方便，房间干净，早餐丰富",
  "书的印刷质量很差，错别字很多",
  "味道不错，分量足，价格实惠",
}
local threads = {}
counter = 0
non2xx = 0

setup = function(thread)
  table.insert(threads, thread)
end

-- DEADLINE_MS, when set, is sent as each request's X-Request-Timeout-Ms.
local headers = {["Content-Type"] = "application/json"}
if os.getenv("DEADLINE_MS") then headers["X-Request-Timeout-Ms"] = os.getenv("DEADLINE_MS") end

request = function()
  counter = counter + 1
  local line = sentences[(counter % #sentences) + 1]
  return wrk.format("POST", nil, headers, '{"line": "' .. line .. '"}')
end

response = function(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

done = function(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("non2xx") end
  io.write(string.format("non2xx %d\n", total))
end
