//! The users the simulated phone has scanned with: who follows the account,
//! since when and through which code, and an optional nickname. This is
//! what `cgi-bin/user/info` answers from.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::Rng;
use serde::Serialize;

use crate::tickets::Scene;

/// Most users remembered; past it an arbitrary one is forgotten.
const MAX_USERS: usize = 1_000_000;
/// Characters of an openid after its leading `o`.
const OPENID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A follower of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub openid: String,
    pub nickname: Option<String>,
    pub subscribe_time: i64,
    pub subscribe_scene: &'static str,
    pub qr_scene: u32,
    pub qr_scene_str: String,
}

/// The `cgi-bin/user/info` answer.
#[derive(Debug, Serialize)]
pub struct UserInfo<'a> {
    pub subscribe: u8,
    pub openid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headimgurl: Option<String>,
    pub language: &'a str,
    pub subscribe_time: i64,
    pub remark: &'a str,
    pub groupid: u32,
    pub tagid_list: [u32; 0],
    pub subscribe_scene: &'a str,
    pub qr_scene: u32,
    pub qr_scene_str: &'a str,
}

impl User {
    /// The user/info answer. A nickname is present when one was given at
    /// scan time, or (with `all_nicknames`) a made-up one for everybody.
    pub fn info<'a>(&'a self, lang: &'a str, all_nicknames: bool) -> UserInfo<'a> {
        let nickname = self.nickname.clone().or_else(|| {
            all_nicknames.then(|| {
                let tail: String = self
                    .openid
                    .chars()
                    .rev()
                    .take(4)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("Sim User {tail}")
            })
        });
        let headimgurl = nickname.as_ref().map(|_| {
            format!(
                "https://thirdwx.qlogo.cn/mmopen/vi_32/sim{}/132",
                self.openid
            )
        });
        UserInfo {
            subscribe: 1,
            openid: &self.openid,
            nickname,
            headimgurl,
            language: lang,
            subscribe_time: self.subscribe_time,
            remark: "",
            groupid: 0,
            tagid_list: [],
            subscribe_scene: self.subscribe_scene,
            qr_scene: self.qr_scene,
            qr_scene_str: &self.qr_scene_str,
        }
    }
}

/// Every user seen.
#[derive(Debug, Default)]
pub struct UserStore {
    map: Mutex<HashMap<String, User>>,
}

impl UserStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, User>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a scan of `scene` by `openid` at `now` (Unix seconds) and
    /// says whether WeChat sends `subscribe` (true) or `SCAN` (false).
    /// `subscribed` is the caller's word on whether the user already
    /// follows; without it the store's memory decides.
    pub fn scan(
        &self,
        openid: &str,
        nickname: Option<String>,
        subscribed: Option<bool>,
        scene: &Scene,
        now: i64,
    ) -> bool {
        let mut map = self.lock();
        let follows = subscribed.unwrap_or_else(|| map.contains_key(openid));
        if !map.contains_key(openid) && map.len() >= MAX_USERS {
            let victim = map.keys().next().cloned();
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        let user = map.entry(openid.to_string()).or_insert_with(|| User {
            openid: openid.to_string(),
            nickname: None,
            subscribe_time: now - 86_400,
            subscribe_scene: "ADD_SCENE_SEARCH",
            qr_scene: 0,
            qr_scene_str: String::new(),
        });
        if !follows {
            user.subscribe_time = now;
            user.subscribe_scene = "ADD_SCENE_QR_CODE";
            user.qr_scene = scene.id().unwrap_or(0);
            user.qr_scene_str = scene.str().unwrap_or_default().to_string();
        }
        if nickname.is_some() {
            user.nickname = nickname;
        }
        !follows
    }

    pub fn get(&self, openid: &str) -> Option<User> {
        self.lock().get(openid).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A new openid shaped like WeChat's: `o` and 27 more characters.
pub fn random_openid() -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(28);
    s.push('o');
    s.extend((0..27).map(|_| char::from(OPENID_CHARS[rng.random_range(0..OPENID_CHARS.len())])));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_then_scan() {
        let users = UserStore::default();
        let scene = Scene::Id(9);
        assert!(users.scan("o1", None, None, &scene, 1000));
        assert!(!users.scan("o1", None, None, &scene, 1001));
        // The caller's word wins over memory.
        assert!(users.scan("o1", None, Some(false), &scene, 1002));
        assert!(!users.scan("o2", Some("Bob".into()), Some(true), &scene, 1003));
        let u = users.get("o1").unwrap();
        assert_eq!(u.subscribe_time, 1002);
        assert_eq!(u.qr_scene, 9);
        assert_eq!(u.subscribe_scene, "ADD_SCENE_QR_CODE");
        let b = users.get("o2").unwrap();
        assert_eq!(b.nickname.as_deref(), Some("Bob"));
        assert_eq!(b.qr_scene, 0);
    }

    #[test]
    fn info_has_no_nickname_by_default() {
        let users = UserStore::default();
        users.scan("oABCD", None, None, &Scene::Str("x".into()), 5);
        let u = users.get("oABCD").unwrap();
        let v = serde_json::to_value(u.info("zh_CN", false)).unwrap();
        assert!(v.get("nickname").is_none() && v.get("headimgurl").is_none());
        assert_eq!(v["subscribe"], 1);
        assert_eq!(v["qr_scene_str"], "x");
        assert_eq!(v["tagid_list"], serde_json::json!([]));
        let v = serde_json::to_value(u.info("en", true)).unwrap();
        assert_eq!(v["nickname"], "Sim User ABCD");
        assert_eq!(v["language"], "en");
    }

    #[test]
    fn openids_look_real() {
        let o = random_openid();
        assert_eq!(o.len(), 28);
        assert!(o.starts_with('o'));
        assert_ne!(o, random_openid());
    }
}
