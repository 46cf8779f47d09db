-- wrk script: POST an image file as the raw body (path in the IMAGE environment variable).
--   IMAGE=photo.jpg wrk -c32 -d20s -s bench/wrk/image_post.lua http://127.0.0.1:8001/cv_sod
local path = os.getenv("IMAGE")
local file = assert(io.open(path, "rb"))
local body = file:read("*a")
file:close()
local content_type = path:match("%.png$") and "image/png" or "image/jpeg"

request = function()
  return wrk.format("POST", nil, {["Content-Type"] = content_type}, body)
end
