/**
 * The TypeScript client against a real storefront server (SQLite, loopback): a shopper's whole
 * journey, a decoded field violation, session refresh, service accounts and retries.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Code, type Interceptor } from "@connectrpc/connect";
import { OrderState } from "../../../generated/typescript/storefront/v1/order_pb.js";
import { Role } from "../../../generated/typescript/storefront/v1/access_pb.js";
import { StorefrontClient, StorefrontError } from "../src/index.js";
import { freePort, startServer, type RunningServer } from "./server.js";

const PASSWORD = "correct horse battery";
const ADDRESS = {
  recipientName: "Ada Lovelace",
  line1: "12 St James's Square",
  city: "London",
  postalCode: "SW1Y 4JH",
  countryCode: "GB",
};

/** Counts the attempts each RPC makes (it runs inside the retries, once per attempt). */
function attemptCounter(): { interceptor: Interceptor; attempts: Map<string, number> } {
  const attempts = new Map<string, number>();
  const interceptor: Interceptor = (next) => async (request) => {
    attempts.set(request.method.name, (attempts.get(request.method.name) ?? 0) + 1);
    return next(request);
  };
  return { interceptor, attempts };
}

async function rejection(promise: Promise<unknown>): Promise<StorefrontError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof StorefrontError, `expected a StorefrontError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

describe("StorefrontClient against a live server", () => {
  let server: RunningServer;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    await server?.stop();
  });

  it("registers, signs in, searches, fills a cart, places an order and reads it back", async () => {
    const client = new StorefrontClient(server.baseUrl);
    try {
      const email = `ts-${randomUUID()}@example.com`;
      const registered = await client.register(email, PASSWORD, "Ada");
      assert.equal(registered.email, email);
      assert.equal(registered.role, Role.CUSTOMER);

      const user = await client.login(email, PASSWORD);
      assert.equal(user.id, registered.id);
      const me = await client.identity.getCurrentUser({});
      assert.equal(me.user?.id, registered.id);

      const found = await client.catalog.searchProducts({ query: "kettle", pageSize: 5 });
      assert.ok(found.products.length > 0, "the demo catalog has kettles");
      const product = found.products[0]!;
      assert.match(product.name, /kettle/i);
      const price = product.price!;

      const added = await client.cart.addCartItem({ productId: product.id, quantity: 2n });
      assert.equal(added.cart?.lines.length, 1);
      assert.equal(added.cart?.totalQuantity, 2n);

      const placed = await client.checkout.placeOrder({
        requestId: randomUUID(),
        shippingAddress: ADDRESS,
        currencyCode: price.currencyCode,
        paymentMethodToken: "tok_visa",
      });
      const order = placed.order!;
      assert.equal(order.state, OrderState.PAID);
      assert.equal(order.lines.length, 1);
      assert.equal(order.lines[0]!.productId, product.id);
      assert.equal(order.lines[0]!.quantity, 2n);
      assert.equal(order.lines[0]!.unitPrice?.amountMinor, price.amountMinor);

      const read = await client.orders.getOrder({ orderId: order.id });
      assert.equal(read.order?.id, order.id);
      assert.equal(read.order?.total?.amountMinor, order.total?.amountMinor);
      assert.equal(read.order?.customerId, registered.id);
    } finally {
      client.close();
    }
  });

  it("decodes field violations, the reason and the request id of a rejected call", async () => {
    const { interceptor, attempts } = attemptCounter();
    const client = new StorefrontClient(server.baseUrl, { interceptors: [interceptor] });
    try {
      const email = `ts-${randomUUID()}@example.com`;
      await client.register(email, PASSWORD);
      await client.login(email, PASSWORD);
      const error = await rejection(
        client.checkout.placeOrder({
          requestId: "not-a-uuid",
          shippingAddress: { ...ADDRESS, countryCode: "XX" },
          currencyCode: "EUR",
          paymentMethodToken: "tok_visa",
        }),
      );
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.equal(error.reason, "FIELD_INVALID");
      const fields = error.fieldViolations.map((violation) => violation.field);
      assert.ok(fields.includes("request_id"), `violations: ${fields.join(", ")}`);
      assert.ok(fields.includes("shipping_address.country_code"), `violations: ${fields.join(", ")}`);
      assert.match(error.rawMessage, /request_id: /);
      assert.match(error.requestId, /^[0-9a-f-]{36}$/);
      assert.equal(attempts.get("PlaceOrder"), 1, "INVALID_ARGUMENT is never retried");
    } finally {
      client.close();
    }
  });

  it("refreshes the session before its access token expires", async () => {
    let skewMs = 0;
    const client = new StorefrontClient(server.baseUrl, { clock: () => Date.now() + skewMs });
    try {
      const email = `ts-${randomUUID()}@example.com`;
      await client.register(email, PASSWORD);
      const user = await client.login(email, PASSWORD);
      const first = client.session!;
      assert.ok(first.refreshAt !== undefined && first.expiresAt !== undefined);

      skewMs = first.refreshAt - Date.now() + 1; // now due for renewal, not yet expired
      const [a, b] = await Promise.all([
        client.identity.getCurrentUser({}),
        client.identity.getCurrentUser({}),
      ]);
      assert.equal(a.user?.id, user.id);
      assert.equal(b.user?.id, user.id);
      const second = client.session!;
      assert.notEqual(second.accessToken, first.accessToken);
      assert.notEqual(second.refreshToken, first.refreshToken);

      // One renewal for both calls: a second would have reused the first refresh token, which
      // the server answers by ending the whole session.
      assert.equal(await client.logout(), 1);
      assert.equal(client.session, undefined);
      const plain = new StorefrontClient(server.baseUrl);
      try {
        const reused = await rejection(plain.identity.refreshSession({ refreshToken: first.refreshToken }));
        assert.equal(reused.code, Code.Unauthenticated);
      } finally {
        plain.close();
      }
    } finally {
      client.close();
    }
  });

  it("authenticates as a service account and renews its token", async () => {
    const admin = new StorefrontClient(server.baseUrl);
    let skewMs = 0;
    const service = new StorefrontClient(server.baseUrl, { clock: () => Date.now() + skewMs });
    try {
      await admin.login(server.admin.email, server.admin.password);
      const created = await admin.identity.createServiceAccount({ displayName: "ts-exporter" });
      const clientId = created.serviceAccount!.clientId;

      await service.useServiceCredentials(clientId, created.clientSecret);
      const first = service.session!;
      assert.equal(first.refreshToken, "", "service tokens have no refresh token");
      // The token is accepted (not UNAUTHENTICATED); no order RPC grants the SERVICE role.
      const denied = await rejection(service.orders.listOrders({ pageSize: 5 }));
      assert.equal(denied.code, Code.PermissionDenied);
      const found = await service.catalog.searchProducts({ query: "kettle" });
      assert.ok(found.products.length > 0);

      skewMs = first.refreshAt! - Date.now() + 1;
      const again = await rejection(service.orders.listOrders({ pageSize: 5 }));
      assert.equal(again.code, Code.PermissionDenied);
      assert.notEqual(service.session!.accessToken, first.accessToken, "a new token was issued");
      assert.equal(await service.logout(), 0);
    } finally {
      admin.close();
      service.close();
    }
  });

  it("watches an order (and staff every order): the order as it is, then each event", async () => {
    const customer = new StorefrontClient(server.baseUrl);
    const admin = new StorefrontClient(server.baseUrl);
    const watching = new AbortController();
    try {
      const email = `ts-${randomUUID()}@example.com`;
      await customer.register(email, PASSWORD);
      await customer.login(email, PASSWORD);
      await admin.login(server.admin.email, server.admin.password);
      const { products } = await customer.catalog.searchProducts({ query: "grinder", pageSize: 1 });
      await customer.cart.addCartItem({ productId: products[0]!.id, quantity: 1n });
      const { order } = await customer.checkout.placeOrder({
        requestId: randomUUID(),
        shippingAddress: ADDRESS,
        currencyCode: products[0]!.price!.currencyCode,
        paymentMethodToken: "tok_visa",
      });
      const updates = customer.watchOrder(order!.id, { signal: watching.signal });
      // Where the shop-wide stream stands now (its first message), so nothing after is missed.
      const probe = new AbortController();
      const opening = admin.orders.watchOrders({}, { signal: probe.signal })[Symbol.asyncIterator]();
      const { position } = (await opening.next()).value!;
      probe.abort();
      const shopWide = admin.watchOrders({
        states: [OrderState.SHIPPED],
        afterPosition: position,
        signal: watching.signal,
      });
      const shopShipped = shopWide.next(); // settles once an order ships
      const first = (await updates.next()).value!;
      assert.equal(first.sequence, 2n);
      assert.equal(first.state, OrderState.PAID);
      assert.equal(first.order?.id, order!.id);
      await admin.orders.shipOrder({
        orderId: order!.id,
        requestId: randomUUID(),
        carrier: "DHL",
        trackingNumber: "T1",
      });
      const shipped = (await updates.next()).value!;
      assert.equal(shipped.sequence, 3n);
      assert.equal(shipped.eventType, "order.shipped");
      assert.equal(shipped.state, OrderState.SHIPPED);
      const seen = (await shopShipped).value!;
      assert.equal(seen.update?.orderId, order!.id);
      assert.equal(seen.update?.sequence, 3n);
      assert.equal(seen.update?.state, OrderState.SHIPPED);
      watching.abort();
      await updates.return(undefined);
      await shopWide.return(undefined);
    } finally {
      customer.close();
      admin.close();
    }
  });

  it("retries UNAVAILABLE up to the policy's attempts, then throws it", async () => {
    const { interceptor, attempts } = attemptCounter();
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    const client = new StorefrontClient(nowhere, {
      interceptors: [interceptor],
      retry: { maxAttempts: 3, initialBackoffMs: 10, maxBackoffMs: 20, multiplier: 2 },
    });
    try {
      const error = await rejection(client.catalog.searchProducts({ query: "kettle" }));
      assert.equal(error.code, Code.Unavailable);
      assert.equal(attempts.get("SearchProducts"), 3);
    } finally {
      client.close();
    }
  });
});

describe("watchOrder across a server restart", () => {
  let server: RunningServer;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    await server?.stop();
  });

  it("resumes after the last sequence seen: no gap, no duplicate", async () => {
    const customer = new StorefrontClient(server.baseUrl);
    const admin = new StorefrontClient(server.baseUrl);
    const watching = new AbortController();
    try {
      const email = `ts-${randomUUID()}@example.com`;
      await customer.register(email, PASSWORD);
      await customer.login(email, PASSWORD);
      await admin.login(server.admin.email, server.admin.password);
      const { products } = await customer.catalog.searchProducts({ query: "kettle", pageSize: 1 });
      await customer.cart.addCartItem({ productId: products[0]!.id, quantity: 1n });
      const { order } = await customer.checkout.placeOrder({
        requestId: randomUUID(),
        shippingAddress: ADDRESS,
        currencyCode: products[0]!.price!.currencyCode,
        paymentMethodToken: "tok_visa",
      });
      const updates = customer.watchOrder(order!.id, { signal: watching.signal });
      assert.equal((await updates.next()).value!.sequence, 2n);

      // The stream ends (UNAVAILABLE, SHUTTING_DOWN); the helper reconnects after sequence 2.
      await server.restart();
      await admin.orders.shipOrder({
        orderId: order!.id,
        requestId: randomUUID(),
        carrier: "DHL",
        trackingNumber: "T2",
      });
      const shipped = (await updates.next()).value!;
      assert.equal(shipped.sequence, 3n);
      assert.equal(shipped.eventType, "order.shipped");
      assert.equal(shipped.order, undefined, "a resumed stream sends no snapshot");
      const nothingMore = await Promise.race([
        updates.next().then(() => "another update"),
        new Promise((resolve) => setTimeout(() => resolve("quiet"), 500)),
      ]);
      assert.equal(nothingMore, "quiet");
      watching.abort();
    } finally {
      customer.close();
      admin.close();
    }
  });
});
