/**
 * Retries unary calls that failed with UNAVAILABLE, with jittered exponential backoff.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/** How often and how patiently UNAVAILABLE unary calls are retried (times in milliseconds). */
export interface RetryPolicy {
  readonly maxAttempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly multiplier: number;
}

/** Three attempts, 100 ms doubling up to 2 s: the Python SDK's defaults. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 3,
  initialBackoffMs: 100,
  maxBackoffMs: 2000,
  multiplier: 2,
};

/** Throws a RangeError for settings that would retry forever or never wait sensibly. */
export function checkRetryPolicy(policy: RetryPolicy): RetryPolicy {
  if (!Number.isInteger(policy.maxAttempts) || policy.maxAttempts < 1 || policy.maxAttempts > 10) {
    throw new RangeError("maxAttempts must be an integer between 1 and 10");
  }
  if (policy.initialBackoffMs < 0 || policy.maxBackoffMs < policy.initialBackoffMs) {
    throw new RangeError("need 0 <= initialBackoffMs <= maxBackoffMs");
  }
  if (policy.multiplier < 1) {
    throw new RangeError("multiplier must be at least 1");
  }
  return policy;
}

/** Returns the pause before retry number `retry` (1-based) for a `random` in [0, 1). */
export function backoffMs(policy: RetryPolicy, retry: number, random: number): number {
  const ceiling = Math.min(
    policy.maxBackoffMs,
    policy.initialBackoffMs * policy.multiplier ** (retry - 1),
  );
  return ceiling * random; // "full jitter", as in gRPC's own retry design
}

/**
 * Repeats a unary call while it fails with UNAVAILABLE and attempts remain. Every attempt shares
 * the call's deadline (its abort signal): a retry that would start after it never happens, and
 * the last real failure is what the caller sees.
 */
export function retryUnavailable(
  policy: RetryPolicy = DEFAULT_RETRY_POLICY,
  random: () => number = Math.random,
): Interceptor {
  checkRetryPolicy(policy);
  return (next) => async (request) => {
    if (request.stream) {
      return next(request);
    }
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(request);
      } catch (error) {
        const failure = ConnectError.from(error);
        if (failure.code !== Code.Unavailable || attempt >= policy.maxAttempts) {
          throw error;
        }
        const waited = await pause(backoffMs(policy, attempt, random()), request.signal);
        if (!waited) {
          throw error; // the deadline passed or the caller cancelled while we waited
        }
      }
    }
  };
}

/** Waits `ms`; resolves false at once if `signal` aborts first. */
function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) {
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
