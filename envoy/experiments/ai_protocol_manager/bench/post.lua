wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "{\"model\": \"claude-sonnet-4-5\", \"max_tokens\": 100, \"temperature\": 0.2, \"messages\": [{\"role\": \"system\", \"content\": \"You are a helpful assistant. Answer briefly.\"}, {\"role\": \"user\", \"content\": \"What is the capital of France? Please answer in one sentence.\"}]}"
