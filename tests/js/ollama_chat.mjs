// The official `ollama` package for JavaScript against the gateway: a streamed chat, then the
// same question without streaming. Prints what it got as one JSON object for the test to check.
// Usage: node ollama_chat.mjs BASE_URL MODEL QUESTION
import { Ollama } from "ollama";

const [host, model, question] = process.argv.slice(2);
const client = new Ollama({ host });
const messages = [{ role: "user", content: question }];
const chunks = [];
for await (const part of await client.chat({ model, messages, stream: true })) {
  chunks.push(part);
}
const whole = await client.chat({ model, messages });
const version = await client.version();
console.log(
  JSON.stringify({
    streamed: chunks.map((c) => c.message.content).join(""),
    chunks: chunks.length,
    last: chunks[chunks.length - 1],
    whole: whole.message.content,
    version: version.version,
  }),
);
