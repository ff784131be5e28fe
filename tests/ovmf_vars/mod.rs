//! A minimal editor for OVMF's variable store file (a copy of `OVMF_VARS*.fd`), and the
//! variables that make OVMF's own UEFI iSCSI initiator (EDK2's IScsiDxe) log in at boot.
//!
//! Written from the UEFI PI specification's firmware volume header and EDK2's variable store
//! format (edk2-stable202211, the version of Debian 12's OVMF): the file starts with a
//! firmware volume header, then a variable store header (authenticated-variable format),
//! then variables, each a 60-byte header followed by its UTF-16 name and its data, every
//! header 4-byte aligned; unused space is 0xFF. Only appending is supported.

use std::path::Path;

/// A GUID in the in-memory/on-disk (mixed-endian) layout.
#[derive(Clone, Copy)]
pub struct Guid(pub u32, pub u16, pub u16, pub [u8; 8]);

impl Guid {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&self.0.to_le_bytes());
        b[4..6].copy_from_slice(&self.1.to_le_bytes());
        b[6..8].copy_from_slice(&self.2.to_le_bytes());
        b[8..].copy_from_slice(&self.3);
        b
    }
}

/// The store header GUID of the authenticated-variable format (gEfiAuthenticatedVariableGuid).
const AUTH_VARIABLE_STORE: Guid = Guid(
    0xaaf32c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
/// Namespace of the initiator name (`I_NAME`) and the `Attempt N` records
/// (gEfiIScsiInitiatorNameProtocolGuid).
pub const ISCSI_INITIATOR_NAME: Guid = Guid(
    0x59324945,
    0xec44,
    0x4c0d,
    [0xb1, 0xcd, 0x9d, 0xb1, 0x39, 0xdf, 0x07, 0x0c],
);
/// Namespace of `AttemptOrder` and `InitialAttemptOrder` (gIScsiConfigGuid).
pub const ISCSI_CONFIG: Guid = Guid(
    0x4b47d616,
    0xa8d6,
    0x4552,
    [0x9d, 0x44, 0xcc, 0xad, 0x2e, 0x0f, 0x4c, 0xf9],
);

pub const NON_VOLATILE: u32 = 0x1;
pub const BOOTSERVICE_ACCESS: u32 = 0x2;

/// Start of every variable header.
const VARIABLE_DATA: u16 = 0x55aa;
/// Header state of a live variable, and of one superseded by a later copy.
const VAR_ADDED: u8 = 0x3f;
const VAR_DELETED: u8 = 0xfd;
/// Size of an authenticated variable header: StartId (2), State (1), reserved (1),
/// Attributes (4), MonotonicCount (8), TimeStamp (16), PubKeyIndex (4), NameSize (4),
/// DataSize (4), VendorGuid (16).
const HEADER: usize = 60;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(|c| c.to_le_bytes())
        .collect()
}

/// An OVMF variable store file loaded in memory.
pub struct VarStore {
    file: Vec<u8>,
    /// Offset of the first variable and end of the variable area.
    first: usize,
    end: usize,
}

impl VarStore {
    pub fn open(path: &Path) -> VarStore {
        let file = std::fs::read(path).unwrap();
        // Firmware volume header: signature "_FVH" at 0x28, header length (u16) at 0x30.
        assert_eq!(
            &file[0x28..0x2c],
            b"_FVH",
            "{}: no firmware volume",
            path.display()
        );
        let store = u16_at(&file, 0x30) as usize;
        // Variable store header: format GUID, Size (u32), Format 0x5A ("formatted"),
        // State 0xFE ("healthy"), 6 reserved bytes.
        assert_eq!(
            file[store..store + 16],
            AUTH_VARIABLE_STORE.bytes(),
            "{}: not an authenticated-variable store",
            path.display()
        );
        assert_eq!((file[store + 20], file[store + 21]), (0x5a, 0xfe));
        let size = u32_at(&file, store + 16) as usize;
        VarStore {
            first: store + 28,
            end: store + size,
            file,
        }
    }

    /// Appends variable `name` in namespace `guid`; an earlier live copy is marked deleted.
    pub fn set(&mut self, name: &str, guid: Guid, attributes: u32, data: &[u8]) {
        let name16 = utf16z(name);
        let mut o = self.first;
        while o + HEADER <= self.end && u16_at(&self.file, o) == VARIABLE_DATA {
            let name_size = u32_at(&self.file, o + 36) as usize;
            let data_size = u32_at(&self.file, o + 40) as usize;
            if self.file[o + 2] == VAR_ADDED
                && self.file[o + 44..o + 60] == guid.bytes()
                && self.file[o + HEADER..o + HEADER + name_size] == name16[..]
            {
                self.file[o + 2] = VAR_DELETED;
            }
            o = (o + HEADER + name_size + data_size + 3) & !3;
        }
        let len = HEADER + name16.len() + data.len();
        assert!(o + len <= self.end, "variable store full");
        assert!(self.file[o..o + len].iter().all(|&b| b == 0xff));
        let mut h = vec![0u8; HEADER];
        h[0..2].copy_from_slice(&VARIABLE_DATA.to_le_bytes());
        h[2] = VAR_ADDED;
        h[4..8].copy_from_slice(&attributes.to_le_bytes());
        // MonotonicCount, TimeStamp and PubKeyIndex stay zero (not time-authenticated).
        h[36..40].copy_from_slice(&(name16.len() as u32).to_le_bytes());
        h[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[44..60].copy_from_slice(&guid.bytes());
        self.file[o..o + HEADER].copy_from_slice(&h);
        self.file[o + HEADER..o + HEADER + name16.len()].copy_from_slice(&name16);
        self.file[o + HEADER + name16.len()..o + len].copy_from_slice(data);
    }

    pub fn save(&self, path: &Path) {
        std::fs::write(path, &self.file).unwrap();
    }
}

/// What one IScsiDxe boot attempt connects to (IPv4, initiator address from DHCP).
pub struct Attempt<'a> {
    /// The NIC the attempt belongs to (QEMU's `mac=`).
    pub mac: [u8; 6],
    pub target: &'a str,
    pub target_ip: [u8; 4],
    pub port: u16,
    /// The boot LUN (single-level, peripheral addressing: LUNs up to 255).
    pub lun: u8,
    /// One-way CHAP (user, secret) and, for mutual CHAP, the target's (user, secret).
    pub chap: Option<(&'a str, &'a str)>,
    pub reverse_chap: Option<(&'a str, &'a str)>,
}

// Layout of ISCSI_ATTEMPT_CONFIG_NVDATA (IScsiConfig.h; packed, x64), the record IScsiDxe
// stores as variable "Attempt N". The leading LIST_ENTRY is IScsiDxe's in-memory link,
// stored but ignored.
const ATTEMPT_SIZE: usize = 1049;
const A_ATTEMPT_CONFIG_INDEX: usize = 17;
const A_ATTEMPT_NAME: usize = 26; // CHAR8[12]
const A_MAC_STRING: usize = 38; // CHAR8[96], "52:54:00:12:34:56" (upper-case hex)
/// ISCSI_SESSION_CONFIG_NVDATA (IScsiMisc.h) follows three 16-byte DNS/DHCP addresses.
const A_SESSION: usize = 182;
const S_TARGET_PORT: usize = 0; // u16
const S_ENABLED: usize = 2; // 1 = enabled (single path)
const S_IP_MODE: usize = 3; // 0 = IPv4
const S_INITIATOR_INFO_FROM_DHCP: usize = 40;
const S_TARGET_NAME: usize = 42; // CHAR8[224]
const S_TARGET_IP: usize = 266; // EFI_IP_ADDRESS (16 bytes; IPv4 in the first four)
const S_BOOT_LUN: usize = 283; // 8 bytes, SCSI LUN structure; zero = LUN 0
const S_CONNECT_TIMEOUT: usize = 291; // u16, milliseconds
const S_CONNECT_RETRY_COUNT: usize = 293;
const S_ISID: usize = 294; // 6 bytes
const SESSION_SIZE: usize = 575;
const A_AUTHENTICATION_TYPE: usize = A_SESSION + SESSION_SIZE; // 0 none, 1 CHAP
/// ISCSI_CHAP_AUTH_CONFIG_NVDATA (IScsiCHAP.h): type (0 one-way, 1 mutual), then name
/// (CHAR8[127]), secret (CHAR8[17]), reverse name, reverse secret.
const A_CHAP: usize = A_AUTHENTICATION_TYPE + 1;
const C_NAME: usize = 1;
const C_SECRET: usize = C_NAME + 127;
const C_REVERSE_NAME: usize = C_SECRET + 17;
const C_REVERSE_SECRET: usize = C_REVERSE_NAME + 127;
const A_ACTIVED: usize = A_CHAP + 289 + 1; // after AutoConfigureSuccess

fn put_str(rec: &mut [u8], at: usize, cap: usize, s: &str) {
    assert!(s.len() < cap, "{s:?} longer than {} bytes", cap - 1);
    rec[at..at + s.len()].copy_from_slice(s.as_bytes());
}

/// The "Attempt `index`" record IScsiDxe creates for a fresh attempt slot (what its driver
/// entry point writes for each of the PcdMaxIScsiAttemptNumber slots when
/// `InitialAttemptOrder` is missing): not active, port 3260, 1 s timeout, CHAP selected.
fn blank_attempt(index: u8) -> Vec<u8> {
    let mut rec = vec![0u8; ATTEMPT_SIZE];
    rec[A_ATTEMPT_CONFIG_INDEX] = index;
    put_str(&mut rec, A_ATTEMPT_NAME, 12, &format!("Attempt {index}"));
    let s = A_SESSION;
    rec[s + S_TARGET_PORT..s + S_TARGET_PORT + 2].copy_from_slice(&3260u16.to_le_bytes());
    rec[s + S_CONNECT_TIMEOUT..s + S_CONNECT_TIMEOUT + 2].copy_from_slice(&1000u16.to_le_bytes());
    rec[A_AUTHENTICATION_TYPE] = 1;
    rec
}

fn attempt_record(index: u8, a: &Attempt) -> Vec<u8> {
    let mut rec = blank_attempt(index);
    let mac = a
        .mac
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    put_str(&mut rec, A_MAC_STRING, 96, &mac);
    let s = A_SESSION;
    rec[s + S_TARGET_PORT..s + S_TARGET_PORT + 2].copy_from_slice(&a.port.to_le_bytes());
    rec[s + S_ENABLED] = 1;
    rec[s + S_IP_MODE] = 0;
    rec[s + S_INITIATOR_INFO_FROM_DHCP] = 1;
    put_str(&mut rec, s + S_TARGET_NAME, 224, a.target);
    rec[s + S_TARGET_IP..s + S_TARGET_IP + 4].copy_from_slice(&a.target_ip);
    rec[s + S_BOOT_LUN..s + S_BOOT_LUN + 8].fill(0);
    rec[s + S_BOOT_LUN + 1] = a.lun;
    rec[s + S_CONNECT_TIMEOUT..s + S_CONNECT_TIMEOUT + 2].copy_from_slice(&5000u16.to_le_bytes());
    rec[s + S_CONNECT_RETRY_COUNT] = 2;
    // An OUI-format ISID from the MAC address, as IScsiDxe's setup form derives it.
    rec[s + S_ISID..s + S_ISID + 6].copy_from_slice(&a.mac);
    rec[s + S_ISID] &= 0x3f;
    match a.chap {
        None => rec[A_AUTHENTICATION_TYPE] = 0,
        Some((user, secret)) => {
            rec[A_AUTHENTICATION_TYPE] = 1;
            rec[A_CHAP] = a.reverse_chap.is_some() as u8;
            put_str(&mut rec, A_CHAP + C_NAME, 127, user);
            put_str(&mut rec, A_CHAP + C_SECRET, 17, secret);
            if let Some((user, secret)) = a.reverse_chap {
                put_str(&mut rec, A_CHAP + C_REVERSE_NAME, 127, user);
                put_str(&mut rec, A_CHAP + C_REVERSE_SECRET, 17, secret);
            }
        }
    }
    rec[A_ACTIVED] = 1;
    rec
}

/// Writes into `store` the variables IScsiDxe reads at boot: the initiator name, the
/// attempt slots (so the driver does not recreate them, overwriting ours) with `attempt`
/// in slot 1, and the order of the attempts to try (just slot 1).
pub fn configure_iscsi_boot(store: &mut VarStore, initiator: &str, attempt: &Attempt) {
    const ATTR: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS;
    // IScsiDxe's driver entry creates slots 1..=PcdMaxIScsiAttemptNumber (8) unless
    // InitialAttemptOrder already lists that many.
    const SLOTS: u8 = 8;
    let mut name = initiator.as_bytes().to_vec();
    name.push(0);
    store.set("I_NAME", ISCSI_INITIATOR_NAME, ATTR, &name);
    let slots: Vec<u8> = (1..=SLOTS).collect();
    store.set("InitialAttemptOrder", ISCSI_CONFIG, ATTR, &slots);
    for i in 1..=SLOTS {
        let rec = if i == 1 {
            attempt_record(1, attempt)
        } else {
            blank_attempt(i)
        };
        store.set(&format!("Attempt {i}"), ISCSI_INITIATOR_NAME, ATTR, &rec);
    }
    store.set("AttemptOrder", ISCSI_CONFIG, ATTR, &[1]);
}

/// The hand-computed offsets above agree with the packed structs' field lists.
#[test]
fn attempt_record_offsets_match_the_packed_structs() {
    fn offsets(fields: &[(&'static str, usize)]) -> (Vec<(&'static str, usize)>, usize) {
        let mut at = 0;
        let mut out = Vec::new();
        for &(name, size) in fields {
            out.push((name, at));
            at += size;
        }
        (out, at)
    }
    let off = |t: &[(&str, usize)], n: &str| t.iter().find(|f| f.0 == n).unwrap().1;
    // ISCSI_SESSION_CONFIG_NVDATA (EFI_IP_ADDRESS is 16 bytes, EFI_IPv4_ADDRESS 4).
    let (session, session_size) = offsets(&[
        ("TargetPort", 2),
        ("Enabled", 1),
        ("IpMode", 1),
        ("LocalIp", 16),
        ("SubnetMask", 4),
        ("Gateway", 16),
        ("InitiatorInfoFromDhcp", 1),
        ("TargetInfoFromDhcp", 1),
        ("TargetName", 224),
        ("TargetIp", 16),
        ("PrefixLength", 1),
        ("BootLun", 8),
        ("ConnectTimeout", 2),
        ("ConnectRetryCount", 1),
        ("IsId", 6),
        ("RedirectFlag", 1),
        ("OriginalTargetPort", 2),
        ("OriginalTargetIp", 16),
        ("DnsMode", 1),
        ("TargetUrl", 255),
    ]);
    assert_eq!(session_size, SESSION_SIZE);
    assert_eq!(off(&session, "Enabled"), S_ENABLED);
    assert_eq!(off(&session, "IpMode"), S_IP_MODE);
    assert_eq!(
        off(&session, "InitiatorInfoFromDhcp"),
        S_INITIATOR_INFO_FROM_DHCP
    );
    assert_eq!(off(&session, "TargetName"), S_TARGET_NAME);
    assert_eq!(off(&session, "TargetIp"), S_TARGET_IP);
    assert_eq!(off(&session, "BootLun"), S_BOOT_LUN);
    assert_eq!(off(&session, "ConnectTimeout"), S_CONNECT_TIMEOUT);
    assert_eq!(off(&session, "ConnectRetryCount"), S_CONNECT_RETRY_COUNT);
    assert_eq!(off(&session, "IsId"), S_ISID);
    // ISCSI_ATTEMPT_CONFIG_NVDATA (LIST_ENTRY is two pointers).
    let (attempt, attempt_size) = offsets(&[
        ("Link", 16),
        ("NicIndex", 1),
        ("AttemptConfigIndex", 1),
        ("DhcpSuccess", 1),
        ("ValidiBFTPath", 1),
        ("ValidPath", 1),
        ("AutoConfigureMode", 1),
        ("AttemptTitleToken", 2),
        ("AttemptTitleHelpToken", 2),
        ("AttemptName", 12),
        ("MacString", 96),
        ("PrimaryDns", 16),
        ("SecondaryDns", 16),
        ("DhcpServer", 16),
        ("SessionConfigData", session_size),
        ("AuthenticationType", 1),
        ("CHAP", 1 + 127 + 17 + 127 + 17),
        ("AutoConfigureSuccess", 1),
        ("Actived", 1),
    ]);
    assert_eq!(attempt_size, ATTEMPT_SIZE);
    assert_eq!(off(&attempt, "AttemptConfigIndex"), A_ATTEMPT_CONFIG_INDEX);
    assert_eq!(off(&attempt, "AttemptName"), A_ATTEMPT_NAME);
    assert_eq!(off(&attempt, "MacString"), A_MAC_STRING);
    assert_eq!(off(&attempt, "SessionConfigData"), A_SESSION);
    assert_eq!(off(&attempt, "AuthenticationType"), A_AUTHENTICATION_TYPE);
    assert_eq!(off(&attempt, "CHAP"), A_CHAP);
    assert_eq!(off(&attempt, "Actived"), A_ACTIVED);
}

/// A second `set` of the same variable supersedes the first; the store stays parseable.
#[test]
fn set_appends_and_supersedes() {
    let path = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    if !path.exists() {
        eprintln!("skipping: no {}", path.display());
        return;
    }
    let mut store = VarStore::open(path);
    let attr = NON_VOLATILE | BOOTSERVICE_ACCESS;
    store.set("AttemptOrder", ISCSI_CONFIG, attr, &[1]);
    store.set("AttemptOrder", ISCSI_CONFIG, attr, &[2, 1]);
    let first = store.first;
    let second = (first + HEADER + utf16z("AttemptOrder").len() + 1 + 3) & !3;
    assert_eq!(store.file[first + 2], VAR_DELETED);
    assert_eq!(store.file[second + 2], VAR_ADDED);
    let data = second + HEADER + utf16z("AttemptOrder").len();
    assert_eq!(store.file[data..data + 2], [2, 1]);
    assert_eq!(store.file[data + 2], 0xff);
}
