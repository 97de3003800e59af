// One case of the compatibility suite, run with the official TypeScript SDK (@anthropic-ai/sdk) as a
// user would.
//
// Usage: node typescript_sdk.mjs CASE, with SIDECRED_NODE_MODULES (where tests/compat/install.sh put the
// SDK), SIDECRED_BASE_URL (the client's base URL) and SIDECRED_API_KEY set. Prints one line of JSON with
// what the client got; an error ends it with exit 1. tests/tests/compat_typescript.rs runs each case
// against the real forwarder and a fake API.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.SIDECRED_NODE_MODULES, 'compat.cjs'));
const Anthropic = require('@anthropic-ai/sdk');
const client = new Anthropic({ baseURL: process.env.SIDECRED_BASE_URL, apiKey: process.env.SIDECRED_API_KEY });
const request = { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user', content: 'Hello' }] };

const cases = {
  async stream() {
    const pieces = [];
    const stream = client.messages.stream(request).on('text', (text) => pieces.push(text));
    const final = await stream.finalMessage();
    return { pieces, text: final.content[0].text, stop_reason: final.stop_reason };
  },

  // Aborts the request once the first piece of text has arrived: the response is closed mid-stream.
  async abort() {
    const controller = new AbortController();
    const stream = await client.messages.create({ ...request, stream: true }, { signal: controller.signal });
    let first;
    try {
      for await (const event of stream) {
        if (event.type === 'content_block_delta') {
          first = event.delta.text;
          controller.abort();
        }
      }
    } catch (e) {
      if (!(e instanceof Anthropic.APIUserAbortError)) throw e;
    }
    if (!controller.signal.aborted) throw new Error('the stream ended before any text arrived');
    return { first };
  },
};

const result = await cases[process.argv[2]]();
console.log(JSON.stringify(result));
