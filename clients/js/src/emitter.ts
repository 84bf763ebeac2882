/** A minimal typed event emitter: `on` returns the function that removes the listener. */
export class Emitter<E extends { [K in keyof E]: unknown }> {
  private readonly listeners = new Map<keyof E, Set<(v: never) => void>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(name: K, fn: (value: E[K]) => void): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(fn as (v: never) => void);
    return () => {
      set!.delete(fn as (v: never) => void);
    };
  }

  /** Calls every listener of `name`; a throwing listener does not stop the others. */
  emit<K extends keyof E>(name: K, value: E[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (v: E[K]) => void)(value);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  /** Whether anyone listens to `name`. */
  has<K extends keyof E>(name: K): boolean {
    return (this.listeners.get(name)?.size ?? 0) > 0;
  }

  /** Drops every listener. */
  clear(): void {
    this.listeners.clear();
  }
}
