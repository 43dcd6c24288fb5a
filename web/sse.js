// Server-sent events over fetch(): EventSource cannot POST, so the response
// body is read and split here. Yields the data of each event (multi-line data
// joined with "\n"); comments and other fields are skipped.

/** Async iterator over the data strings of an SSE response body. */
export async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buf += decoder.decode(value ?? new Uint8Array(), { stream: !done });
      // Normalise line ends, but keep a trailing \r: its \n may be in the next read.
      const keep = !done && buf.endsWith('\r') ? 1 : 0;
      let text = buf.slice(0, buf.length - keep).replace(/\r\n?/g, '\n');
      const tail = buf.slice(buf.length - keep);
      let end;
      while ((end = text.indexOf('\n\n')) >= 0) {
        const data = eventData(text.slice(0, end));
        text = text.slice(end + 2);
        if (data !== null) yield data;
      }
      buf = text + tail;
      if (done) {
        const data = buf.trim() ? eventData(buf) : null;
        if (data !== null) yield data;
        return;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function eventData(block) {
  const lines = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('data:')) lines.push(line.slice(line[5] === ' ' ? 6 : 5));
  }
  return lines.length ? lines.join('\n') : null;
}
