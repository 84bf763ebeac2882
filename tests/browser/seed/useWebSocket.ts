// The seed article's hook, pattern #3, exactly as published.
'use client';
import { useEffect, useRef, useState, useCallback } from 'react';
interface UseWebSocketOptions {
url: string;
onMessage?: (data: string) => void;
reconnectDelay?: number;
}
export function useWebSocket({ url, onMessage, reconnectDelay = 2000 }: UseWebSocketOptions) {
const wsRef = useRef<WebSocket | null>(null);
const [status, setStatus] = useState<'connecting' | 'open' | 'closed'>('connecting');
const connect = useCallback(() => {
const ws = new WebSocket(url);
wsRef.current = ws;
ws.onopen = () => setStatus('open');
ws.onclose = () => {
setStatus('closed');
setTimeout(connect, reconnectDelay);
};
ws.onmessage = (e) => onMessage?.(e.data);
return ws;
}, [url, onMessage, reconnectDelay]);
useEffect(() => {
const ws = connect();
return () => ws.close();
}, [connect]);
const send = useCallback((data: string) => {
if (wsRef.current?.readyState === WebSocket.OPEN) {
wsRef.current.send(data);
}
}, []);
return { send, status };
}
