-- wrk script: POST images as raw bodies, rotating through the files named in IMAGES
-- (comma-separated paths; .png is sent as image/png, anything else as image/jpeg).
--   IMAGES=a.jpg,b.png wrk -c32 -d20s -s bench/wrk/image_post.lua http://127.0.0.1:8080/cv_sod
local bodies = {}
for path in string.gmatch(os.getenv("IMAGES"), "[^,]+") do
  local file = assert(io.open(path, "rb"))
  table.insert(bodies, {file:read("*a"), path:match("%.png$") and "image/png" or "image/jpeg"})
  file:close()
end
counter = 0

request = function()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  return wrk.format("POST", nil, {["Content-Type"] = body[2]}, body[1])
end
