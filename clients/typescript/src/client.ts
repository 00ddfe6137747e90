/**
 * StorefrontClient: one HTTP/2 connection with sessions, deadlines, retries and readable errors
 * behind typed clients of every service.
 */
import type * as http2 from "node:http2";
import {
  Code,
  ConnectError,
  createClient,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { CartService } from "../../../generated/typescript/storefront/v1/cart_service_pb.js";
import { CatalogService } from "../../../generated/typescript/storefront/v1/catalog_service_pb.js";
import { CheckoutService } from "../../../generated/typescript/storefront/v1/checkout_service_pb.js";
import { CurrencyService } from "../../../generated/typescript/storefront/v1/currency_service_pb.js";
import {
  IdentityService,
  type User,
} from "../../../generated/typescript/storefront/v1/identity_service_pb.js";
import { InventoryService } from "../../../generated/typescript/storefront/v1/inventory_service_pb.js";
import type { OrderState } from "../../../generated/typescript/storefront/v1/order_pb.js";
import {
  OrderService,
  type WatchOrderResponse,
  type WatchOrdersResponse,
} from "../../../generated/typescript/storefront/v1/order_service_pb.js";
import { PromotionService } from "../../../generated/typescript/storefront/v1/promotion_service_pb.js";
import { ReportService } from "../../../generated/typescript/storefront/v1/report_service_pb.js";
import { WebhookService } from "../../../generated/typescript/storefront/v1/webhook_service_pb.js";
import { ShippingService } from "../../../generated/typescript/storefront/v1/shipping_service_pb.js";
import { DEFAULT_REFRESH_BEFORE_MS, SessionManager, attachToken, type Session } from "./auth.js";
import { StorefrontError, decodeErrors } from "./errors.js";
import { DEFAULT_RETRY_POLICY, backoffMs, retryUnavailable, type RetryPolicy } from "./retry.js";

/** Calls without their own `timeoutMs` give up after this long, as in the Python SDK. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** How long one WatchOrder connection lasts before `watchOrder` renews it. */
export const WATCH_STREAM_MS = 300_000;
/** Patient enough for a server restart: up to 10 tries, pauses growing to 5 s. */
export const WATCH_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 10,
  initialBackoffMs: 200,
  maxBackoffMs: 5000,
  multiplier: 2,
};

export interface StorefrontClientOptions {
  /** Deadline of calls that set no `timeoutMs` of their own; 10 s unless given. */
  readonly defaultTimeoutMs?: number;
  /** Retries of UNAVAILABLE unary calls; three attempts unless given. */
  readonly retry?: RetryPolicy;
  /** Renew the session this long before its access token expires (at most half its life). */
  readonly refreshBeforeMs?: number;
  /** Milliseconds since the epoch; replaceable in tests. */
  readonly clock?: () => number;
  /** TLS (and mutual TLS) settings for an `https://` address: `ca`, `cert`, `key`... */
  readonly tls?: http2.SecureClientSessionOptions;
  /** Extra interceptors, run once per attempt, after the token is attached. */
  readonly interceptors?: readonly Interceptor[];
}

/**
 * A storefront connection. `new StorefrontClient("http://127.0.0.1:50051")` speaks gRPC over
 * cleartext HTTP/2; give an `https://` address and `tls` for TLS. Every failed unary call throws a
 * StorefrontError.
 */
export class StorefrontClient {
  readonly identity: Client<typeof IdentityService>;
  readonly catalog: Client<typeof CatalogService>;
  readonly inventory: Client<typeof InventoryService>;
  readonly currency: Client<typeof CurrencyService>;
  readonly shipping: Client<typeof ShippingService>;
  readonly cart: Client<typeof CartService>;
  readonly checkout: Client<typeof CheckoutService>;
  readonly orders: Client<typeof OrderService>;
  readonly webhooks: Client<typeof WebhookService>;
  readonly promotions: Client<typeof PromotionService>;
  readonly reports: Client<typeof ReportService>;
  /** Signs in and renews tokens: sends no token of its own, so renewal never recurses. */
  private readonly publicIdentity: Client<typeof IdentityService>;
  private readonly sessions: SessionManager;
  private readonly connection: Http2SessionManager;

  constructor(baseUrl: string, options: StorefrontClientOptions = {}) {
    this.connection = new Http2SessionManager(baseUrl, {}, options.tls);
    const retry = retryUnavailable(options.retry ?? DEFAULT_RETRY_POLICY);
    const extra = options.interceptors ?? [];
    // Outermost first: errors are decoded once, after the last attempt; one token serves every
    // attempt; the transport's deadline covers them all.
    const transport = (interceptors: Interceptor[]): Transport =>
      createGrpcTransport({
        baseUrl,
        sessionManager: this.connection,
        defaultTimeoutMs: options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS,
        interceptors,
      });
    this.publicIdentity = createClient(
      IdentityService,
      transport([decodeErrors, retry, ...extra]),
    );
    this.sessions = new SessionManager(
      this.publicIdentity,
      options.clock ?? Date.now,
      options.refreshBeforeMs ?? DEFAULT_REFRESH_BEFORE_MS,
    );
    const signedIn = transport([
      decodeErrors,
      attachToken(() => this.sessions.accessToken()),
      retry,
      ...extra,
    ]);
    this.identity = createClient(IdentityService, signedIn);
    this.catalog = createClient(CatalogService, signedIn);
    this.inventory = createClient(InventoryService, signedIn);
    this.currency = createClient(CurrencyService, signedIn);
    this.shipping = createClient(ShippingService, signedIn);
    this.cart = createClient(CartService, signedIn);
    this.checkout = createClient(CheckoutService, signedIn);
    this.orders = createClient(OrderService, signedIn);
    this.webhooks = createClient(WebhookService, signedIn);
    this.promotions = createClient(PromotionService, signedIn);
    this.reports = createClient(ReportService, signedIn);
  }

  /** The current session, or undefined when signed out. */
  get session(): Session | undefined {
    return this.sessions.session;
  }

  /** Registers a customer account and returns it; does not sign in. */
  async register(email: string, password: string, displayName = ""): Promise<User> {
    const response = await this.publicIdentity.registerUser({ email, password, displayName });
    return required(response.user, "RegisterUser");
  }

  /** Signs in, keeps the session for later calls and returns the user. */
  async login(email: string, password: string): Promise<User> {
    const response = await this.publicIdentity.login({ email, password });
    this.sessions.start(required(response.session, "Login"));
    return required(response.user, "Login");
  }

  /** Authenticates as a service account, re-issuing its token before each expiry. */
  async useServiceCredentials(clientId: string, clientSecret: string): Promise<void> {
    await this.sessions.startService(clientId, clientSecret);
  }

  /** Ends the user session on the server, forgets it and returns the ended session count. */
  async logout(options: { allSessions?: boolean } = {}): Promise<number> {
    const session = this.session;
    try {
      if (session === undefined || session.refreshToken === "") {
        return 0; // service tokens have no server-side session to end
      }
      const response = await this.identity.logout({ allSessions: options.allSessions ?? false });
      return response.endedSessionCount;
    } finally {
      this.sessions.clear();
    }
  }

  /**
   * Yields an order's updates for as long as the caller iterates: the order as it is (unless
   * resuming after `afterSequence`), then each event in sequence order. A stream that ends (a
   * server shutting down or restarting, a lost connection, the periodic renewal) is reopened
   * after the last sequence seen, so nothing is missed or repeated; UNAVAILABLE and CANCELLED
   * are retried with backoff, any other error is thrown (as a StorefrontError).
   */
  async *watchOrder(
    orderId: string,
    options: { afterSequence?: bigint; retry?: RetryPolicy; streamMs?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<WatchOrderResponse> {
    let last = options.afterSequence ?? 0n;
    const open = (timeoutMs: number) =>
      this.orders.watchOrder({ orderId, afterSequence: last }, { timeoutMs, signal: options.signal });
    for await (const update of resumed(open, options)) {
      last = update.sequence;
      yield update;
    }
  }

  /**
   * Yields every order's events that leave it in one of `states` (all when empty), shop-wide
   * (staff only), for as long as the caller iterates; resumes after the last position seen like
   * `watchOrder`. The first message of each stream, which only says where it starts, is skipped.
   */
  async *watchOrders(
    options: {
      states?: OrderState[];
      afterPosition?: bigint;
      retry?: RetryPolicy;
      streamMs?: number;
      signal?: AbortSignal;
    } = {},
  ): AsyncGenerator<WatchOrdersResponse> {
    let last = options.afterPosition ?? 0n;
    const open = (timeoutMs: number) =>
      this.orders.watchOrders(
        { states: options.states ?? [], afterPosition: last },
        { timeoutMs, signal: options.signal },
      );
    for await (const message of resumed(open, options)) {
      last = message.position;
      if (message.update !== undefined) {
        yield message;
      }
    }
  }

  /** Forgets the session and closes the connection; calls in flight are cancelled. */
  close(): void {
    this.sessions.clear();
    this.connection.abort();
  }
}

function required<T>(value: T | undefined, rpc: string): T {
  if (value === undefined) {
    throw new Error(`${rpc} answered without the expected message`);
  }
  return value;
}

/**
 * The messages of `open(timeoutMs)`, reopened (the caller's request picks up after the last
 * message) when the stream ends for a reason worth retrying: UNAVAILABLE and CANCELLED with
 * backoff, DEADLINE_EXCEEDED (the periodic renewal) at once; anything else is thrown.
 */
async function* resumed<T>(
  open: (timeoutMs: number) => AsyncIterable<T>,
  options: { retry?: RetryPolicy; streamMs?: number; signal?: AbortSignal },
): AsyncGenerator<T> {
  const policy = options.retry ?? WATCH_RETRY_POLICY;
  let failures = 0;
  for (;;) {
    try {
      for await (const message of open(options.streamMs ?? WATCH_STREAM_MS)) {
        failures = 0;
        yield message;
      }
    } catch (error) {
      const failure = ConnectError.from(error);
      if (options.signal?.aborted) {
        return;
      }
      if (failure.code === Code.DeadlineExceeded) {
        continue; // the connection's time is up: renew it at once
      }
      if (failure.code !== Code.Unavailable && failure.code !== Code.Canceled) {
        throw StorefrontError.of(failure);
      }
      failures += 1;
      if (failures >= policy.maxAttempts) {
        throw StorefrontError.of(failure);
      }
      await new Promise((resolve) => setTimeout(resolve, backoffMs(policy, failures, Math.random())));
    }
  }
}
