// Reads a chat stream exactly as the Next.js frontend does (migration guide, "Update Response
// Parsing"): fetch, getReader, TextDecoder, split each chunk on '\n', strip "data: ", JSON.parse.
// Usage: node frontend_stream.mjs URL JSON_BODY [ORIGIN]
// Prints one JSON object: {status, contentType, content, frames, done, cached, error, parseErrors}.
const [url, body, origin] = process.argv.slice(2);
const headers = { 'Content-Type': 'application/json', 'Accept': 'text/event-stream' };
if (origin) headers['Origin'] = origin;

const result = { status: 0, contentType: '', content: '', frames: 0, done: false, cached: false,
                 error: null, parseErrors: [] };
const response = await fetch(url, { method: 'POST', headers, body });
result.status = response.status;
result.contentType = response.headers.get('content-type');
const reader = response.body?.getReader();
const decoder = new TextDecoder();
let accumulatedText = '';

while (true) {
  const { done, value } = await reader.read();
  if (done) break;

  const chunk = decoder.decode(value, { stream: true });
  const lines = chunk.split('\n').filter(line => line.trim());

  for (const line of lines) {
    // Remove "data: " prefix if present
    const data = line.startsWith('data: ') ? line.slice(6) : line;
    let json;
    try {
      json = JSON.parse(data);
    } catch (e) {
      result.parseErrors.push(line);
      continue;
    }
    result.frames += 1;

    if (json.content) {
      accumulatedText += json.content;
    }
    if (json.error) {
      result.error = json.error;
    }
    if (json.done) {
      result.done = true;
      if (json.cached) {
        result.cached = true;
      }
    }
  }
}
result.content = accumulatedText;
console.log(JSON.stringify(result));
