-- POST a 100 KiB body (the echo app sends it back).
wrk.method = "POST"
wrk.body = string.rep("x", 102400)
wrk.headers["Content-Type"] = "application/octet-stream"
