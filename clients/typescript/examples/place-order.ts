/**
 * Signs in (registering the account first if needed), finds a product, orders one and prints the
 * order: `npm run example -- http://127.0.0.1:50051 ada@example.com "correct horse battery" kettle`.
 */
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { OrderState } from "../../../generated/typescript/storefront/v1/order_pb.js";
import { StorefrontClient, StorefrontError } from "../src/index.js";

async function main(argv: string[]): Promise<number> {
  const [baseUrl = "http://127.0.0.1:50051", email = "ada@example.com", password = "correct horse battery", query = "kettle"] = argv;
  const client = new StorefrontClient(baseUrl);
  try {
    try {
      await client.register(email, password, "Ada");
    } catch (error) {
      if (!(error instanceof StorefrontError && error.code === Code.AlreadyExists)) {
        throw error;
      }
    }
    await client.login(email, password);
    const { products } = await client.catalog.searchProducts({ query, pageSize: 1 });
    const product = products[0];
    if (product === undefined) {
      console.error(`no product matches "${query}"`);
      return 1;
    }
    await client.cart.addCartItem({ productId: product.id, quantity: 1n });
    const { order } = await client.checkout.placeOrder({
      requestId: randomUUID(), // reused as is if this call is retried
      shippingAddress: { recipientName: "Ada Lovelace", line1: "12 St James's Square", city: "London", postalCode: "SW1Y 4JH", countryCode: "GB" },
      currencyCode: product.price?.currencyCode ?? "EUR",
      paymentMethodToken: "tok_visa",
    });
    const total = order?.total;
    console.log(`order ${order?.id}: ${OrderState[order?.state ?? 0]}, ${product.name}, total ${total?.amountMinor} ${total?.currencyCode} (minor units)`);
    return 0;
  } catch (error) {
    if (error instanceof StorefrontError) {
      const fields = error.fieldViolations.map((v) => `\n  ${v.field}: ${v.description}`).join("");
      console.error(`error: ${error.codeName} ${error.reason}: ${error.rawMessage} (request id ${error.requestId || "-"})${fields}`);
      return 1;
    }
    throw error;
  } finally {
    client.close();
  }
}

process.exitCode = await main(process.argv.slice(2));
