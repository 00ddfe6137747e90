/**
 * The storefront TypeScript client: `StorefrontClient` plus the generated messages and services
 * (import those from "../../../generated/typescript/storefront/v1/*_pb.js" or re-exported here).
 */
export {
  StorefrontClient,
  DEFAULT_TIMEOUT_MS,
  WATCH_RETRY_POLICY,
  WATCH_STREAM_MS,
  type StorefrontClientOptions,
} from "./client.js";
export { DEFAULT_REFRESH_BEFORE_MS, SessionManager, attachToken, sessionFrom, type Session } from "./auth.js";
export { StorefrontError, REQUEST_ID_KEY, codeName, decodeErrors, type FieldViolation } from "./errors.js";
export {
  DEFAULT_RETRY_POLICY,
  backoffMs,
  checkRetryPolicy,
  retryUnavailable,
  type RetryPolicy,
} from "./retry.js";
export * as access from "../../../generated/typescript/storefront/v1/access_pb.js";
export * as cart from "../../../generated/typescript/storefront/v1/cart_service_pb.js";
export * as catalog from "../../../generated/typescript/storefront/v1/catalog_service_pb.js";
export * as checkout from "../../../generated/typescript/storefront/v1/checkout_service_pb.js";
export * as common from "../../../generated/typescript/storefront/v1/common_pb.js";
export * as currency from "../../../generated/typescript/storefront/v1/currency_service_pb.js";
export * as identity from "../../../generated/typescript/storefront/v1/identity_service_pb.js";
export * as inventory from "../../../generated/typescript/storefront/v1/inventory_service_pb.js";
export * as order from "../../../generated/typescript/storefront/v1/order_pb.js";
export * as orders from "../../../generated/typescript/storefront/v1/order_service_pb.js";
export * as product from "../../../generated/typescript/storefront/v1/product_pb.js";
export * as shipping from "../../../generated/typescript/storefront/v1/shipping_service_pb.js";
export * as webhooks from "../../../generated/typescript/storefront/v1/webhook_service_pb.js";
