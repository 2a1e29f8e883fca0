//! Every record type the store decodes, on arbitrary bytes (MessagePack, or JSON from earlier
//! versions when the first byte is `{` or `[`): a corrupt store gives an error, never a panic.
//! Whatever decodes encodes again and decodes to the same record.
#![no_main]

use std::fmt::Debug;

use latchkey::domain::model::{Attempt, AuthCode, Email};
use latchkey::store::sled_store::codec::{decode, encode};
use latchkey::store::sled_store::records::{
    KeyRecord as SigningKeyRecord, LinkRecord as Link, RateBucketRecord as RateBucket, SessionRecord as Session,
    UserRecord as User,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    let Ok(record) = decode::<T>(bytes) else {
        return;
    };
    let again = encode(&record);
    match decode::<T>(&again) {
        Ok(copy) => assert_eq!(copy, record, "{} from {bytes:?}", std::any::type_name::<T>()),
        Err(error) => panic!(
            "{} from {bytes:?} does not decode once encoded again ({again:?}): {error}",
            std::any::type_name::<T>()
        ),
    }
}

fuzz_target!(|bytes: &[u8]| {
    check::<User>(bytes);
    check::<Link>(bytes);
    check::<Session>(bytes);
    check::<Attempt>(bytes);
    check::<Email>(bytes);
    check::<AuthCode>(bytes);
    check::<Vec<SigningKeyRecord>>(bytes);
    // A bucket's tokens may be NaN, which equals nothing: compare bit patterns.
    if let Ok(bucket) = decode::<RateBucket>(bytes) {
        let copy: RateBucket = decode(&encode(&bucket)).expect("a rate bucket encodes and decodes again");
        assert_eq!(
            (copy.tokens.to_bits(), copy.updated_at, copy.full_at),
            (bucket.tokens.to_bits(), bucket.updated_at, bucket.full_at),
            "{bytes:?}"
        );
    }
});
