/**
 * An incremental text/event-stream parser (the HTML standard's rules). The
 * client reads SSE through fetch rather than EventSource because it must see
 * the `: hb` comments to detect silent drops, send an Authorization header, and
 * decide itself when and how to reconnect.
 */

/** One dispatched event. `id` is the stream's last event id at dispatch time. */
export interface SseEvent {
  id: string | null;
  /** Whether this block had its own `id:` line (server messages do; reset and presence blocks do not). */
  hasId: boolean;
  event: string;
  data: string;
}

export interface SseParserHandlers {
  onEvent(ev: SseEvent): void;
  /** A comment line (without the colon), e.g. `hb`. */
  onComment?(text: string): void;
  /** A `retry:` field, ms. */
  onRetry?(ms: number): void;
  /** An `id:` field, in any block. */
  onId?(id: string): void;
  /** A block that set the id but carried no data: the server saying "you are here". */
  onIdOnly?(id: string): void;
}

export class SseParser {
  private buf = '';
  private sawCR = false;
  private first = true;
  private data: string[] = [];
  private event = '';
  private hasData = false;
  private blockId = false;
  /** The last event id the stream set. */
  lastEventId: string | null = null;

  constructor(private readonly h: SseParserHandlers) {}

  /** Feeds decoded text; complete lines are handled at once, a partial one is kept. */
  feed(chunk: string): void {
    if (!chunk) return; // an empty read must not forget a CR that ended the last one
    if (this.first) {
      this.first = false;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    let text = this.buf + chunk;
    let start = 0;
    if (this.sawCR && text.charCodeAt(0) === 10) start = 1; // CR at the end of the last chunk, LF now
    this.sawCR = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(text.slice(start, i));
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this.sawCR = true;
        }
      }
      start = i + 1;
    }
    this.buf = text.slice(start);
    text = '';
  }

  private line(l: string): void {
    if (l === '') {
      this.dispatch();
      return;
    }
    if (l.charCodeAt(0) === 58) {
      const t = l.slice(1);
      this.h.onComment?.(t.charCodeAt(0) === 32 ? t.slice(1) : t);
      return;
    }
    const colon = l.indexOf(':');
    let field = l;
    let value = '';
    if (colon >= 0) {
      field = l.slice(0, colon);
      value = l.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (field) {
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'event':
        this.event = value;
        break;
      case 'id':
        if (value.indexOf('\0') < 0) {
          this.lastEventId = value;
          this.blockId = true;
          this.h.onId?.(value);
        }
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.h.onRetry?.(Number(value));
        break;
      default:
        break;
    }
  }

  private dispatch(): void {
    if (this.hasData) {
      this.h.onEvent({
        id: this.lastEventId,
        hasId: this.blockId,
        event: this.event || 'message',
        data: this.data.join('\n'),
      });
    } else if (this.blockId && this.lastEventId !== null) {
      this.h.onIdOnly?.(this.lastEventId);
    }
    this.blockId = false;
    this.data = [];
    this.event = '';
    this.hasData = false;
  }
}
