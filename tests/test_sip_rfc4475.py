"""The RFC 4475 torture messages (section 3: 3.1.1 valid, 3.1.2 invalid, 3.2 transaction
layer, 3.3 application layer, 3.4 backward compatibility), each sent to an in-process SIP
gateway on loopback, with the answer a bot UAS owes it.

The messages are written in the RFC's own notation (its section 2): `<allOneLine>` joins
lines, `<hex>..</hex>` is raw octets. They are re-targeted before sending: Call-ID and tags
made unique, SDP connection addresses and the audio port pointed at a loopback socket of
ours, the one Record-Route at loopback too, and Content-Length recomputed where the RFC's
value was the body's true length. Where RFC 4475 lets an element either reject a message
or accept it liberally, the gateway accepts it and the expected answer says so.

Every request gets its final response (with a To tag), or nothing where the RFC says a
response cannot or should not be sent; responses that match no transaction are dropped;
no traceback is logged; and a normal call works after the whole set.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import dataclass, field

import pytest

from tests.test_sip_torture import SDP, Peer, _drain, _peer, request, sip_gateway
from voicebot.telephony.gateway import SipGateway
from voicebot.telephony.message import SipResponse, parse_message, tag_of

# The SDP body most of the RFC's INVITEs carry (audio PCMU + 12, video LPC), for host X.
_SDP = """v=0
o=mhandley 29739 7272939 IN IP4 {x}
s=-
c=IN IP4 {x}
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"""
_BINARY = bytes(range(256)).hex()  # stands in for 3.1.1.11's PKCS#7 signature


def _sdp(host: str) -> str:
    return _SDP.format(x=host)


@dataclass
class Case:
    """One RFC 4475 message and what the gateway must do with it."""

    name: str  # the RFC's file name
    section: str
    text: str
    status: int | None  # the final response; None: no answer at all
    header: str | None = None  # a header the response must carry
    relength: bool = True  # Content-Length set to the (re-targeted) body's length
    subs: dict[str, str] = field(default_factory=dict)  # further re-targeting
    m_lines: int | None = None  # a 200 to INVITE: how many m-lines its SDP answer has


CASES = [
    # -- 3.1.1 valid messages ------------------------------------------------------------
    # Folding, LWS around every separator, a To tag with spaces around "=": an INVITE in
    # a dialog we do not have (RFC 3261 12.2.2: 481); the same without its To tag is a
    # new call, answered with both m-lines (the video one rejected with port 0).
    Case("wsinv", "3.1.1.1", r"""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""", 481),
    # Every token character in method, URI, tags and an extension header; NUL, BEL and DEL
    # as quoted-pairs in a display name; UTF-8 in a quoted parameter: an unknown method.
    Case("intmeth", "3.1.1.2", r"""<allOneLine>
!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*
:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
</allOneLine>
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
<allOneLine>
To: "BEL:\<hex>07</hex> NUL:\<hex>00</hex> DEL:\<hex>7F</hex>" <sip:1_unusual.URI~(to-be!sure)
&isn't+it$/crazy?,/;;*@example.com>
</allOneLine>
<allOneLine>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=
"<hex>D180D0B0D0B1D0BED182D0B0D18ED189D0B8D0B9</hex>";tag=_token~1'+`*%!-.
</allOneLine>
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:<hex>EFBBBF</hex>大停電
Content-Length: 0

""", 501, "Allow"),
    Case("esc01", "3.1.1.3", """INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

""" + _sdp("192.0.2.1"), 200, m_lines=2),
    Case("escnull", "3.1.1.4", """REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0

""", 405, "Allow"),
    # RE%47IST%45R is not REGISTER (no escaping in methods): an unknown method.
    Case("esc02", "3.1.1.5", """RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

""", 501, "Allow"),
    Case("lwsdisp", "3.1.1.6", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

""", 200, "Allow"),
    Case("longreq", "3.1.1.7", """INVITE sip:user@example.com SIP/2.0
<allOneLine>
To: "I have a user name of extremeextremeextremeextremeextremeextremeextremeextreme
extremeextreme proportion"<sip:user@example.com:6000;unknownparam1=verylonglonglonglong
longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglongvalue;longparamnamenamename
namenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamenamename
namename=shortvalue;verylonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong
longlonglonglonglonglonglonglongParameterNameWithNoValue>
</allOneLine>
<allOneLine>
F: sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallernameamazinglylong
callernameamazinglylongcallername@example.net;tag=12982982982982982982982982982982982982982
9829829829829829829829829829829829829829829829829829829829829829829829829829829829829829829
8298298298298298298298242;unknownheaderparamnamenamenamenamenamenamenamenamenamenamename
namenamenamenamenamenamenamenamename=unknowheaderparamvaluevaluevaluevaluevaluevaluevalue
valuevaluevaluevaluevaluevaluevaluevalue;unknownValuelessparamnameparamnameparamnameparam
nameparamnameparamnameparamnameparamnameparamnameparamname
</allOneLine>
<allOneLine>
Call-ID: longreq.onereallyreallyreallyreallyreallyreallyreallyreallyreallyreallyreally
reallyreallyreallyreallyreallyreallyreallyreallyreallylongcallid
</allOneLine>
CSeq: 3882340 INVITE
<allOneLine>
Unknown-LongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLongLong-Name:
 unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-value;
 unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong-
parameter-name = unknown-longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglong
longlonglonglong-parameter-value
</allOneLine>
Via: SIP/2.0/TCP sip33.example.com
v: SIP/2.0/TCP sip32.example.com
V: SIP/2.0/TCP sip31.example.com
Via: SIP/2.0/TCP sip30.example.com
ViA: SIP/2.0/TCP sip29.example.com
VIa: SIP/2.0/TCP sip28.example.com
VIA: SIP/2.0/TCP sip27.example.com
via: SIP/2.0/TCP sip26.example.com
viA: SIP/2.0/TCP sip25.example.com
vIa: SIP/2.0/TCP sip24.example.com
vIA: SIP/2.0/TCP sip23.example.com
V :  SIP/2.0/TCP sip22.example.com
v :  SIP/2.0/TCP sip21.example.com
V  : SIP/2.0/TCP sip20.example.com
v  : SIP/2.0/TCP sip19.example.com
Via : SIP/2.0/TCP sip18.example.com
Via  : SIP/2.0/TCP sip17.example.com
Via: SIP/2.0/TCP sip16.example.com
Via: SIP/2.0/TCP sip15.example.com
Via: SIP/2.0/TCP sip14.example.com
Via: SIP/2.0/TCP sip13.example.com
Via: SIP/2.0/TCP sip12.example.com
Via: SIP/2.0/TCP sip11.example.com
Via: SIP/2.0/TCP sip10.example.com
Via: SIP/2.0/TCP sip9.example.com
Via: SIP/2.0/TCP sip8.example.com
Via: SIP/2.0/TCP sip7.example.com
Via: SIP/2.0/TCP sip6.example.com
Via: SIP/2.0/TCP sip5.example.com
Via: SIP/2.0/TCP sip4.example.com
Via: SIP/2.0/TCP sip3.example.com
Via: SIP/2.0/TCP sip2.example.com
Via: SIP/2.0/TCP sip1.example.com
<allOneLine>
Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylonglonglonglonglonglonglong
longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglong
longlonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglonglongbranchvalue
</allOneLine>
Max-Forwards: 70
<allOneLine>
Contact: <sip:amazinglylongcallernameamazinglylongcallernameamazinglylongcallername
amazinglylongcallernameamazinglylongcallername@host5.example.net>
</allOneLine>
Content-Type: application/sdp
l: 150

""" + _sdp("192.0.2.1"), 200, m_lines=2),
    # A REGISTER with Content-Length 0 and an INVITE after it in the same datagram: the
    # REGISTER is answered, the extra octets ignored (no call comes of the INVITE).
    Case("dblreq", "3.1.1.8", """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.15
s=-
c=IN IP4 192.0.2.15
t=0 0
m=audio 49217 RTP/AVP 0 12
m =video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""", 405, "Allow", relength=False),
    Case("semiuri", "3.1.1.9", """OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

""", 200),
    Case("transports", "3.1.1.10", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

""", 200),
    # Multipart with a binary part: MESSAGE is not a method of ours (405 with Allow).
    Case("mpart01", "3.1.1.11", """MESSAGE sip:kumiko@example.org SIP/2.0
<allOneLine>
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport
</allOneLine>
Max-Forwards: 70
Route: <sip:127.0.0.1:5080>
<allOneLine>
Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBU
aZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=
</allOneLine>
Contact: <sip:fluffy@127.0.0.1:5070>
To: <sip:kumiko@example.org>
From: <sip:fluffy@example.com>;tag=2fb0dcc9
Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..
CSeq: 1 MESSAGE
Content-Transfer-Encoding: binary
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Date: Sat, 15 Oct 2005 04:44:56 GMT
User-Agent: SIPimp.org/0.2.5 (curses)
Content-Length: 553

--7a9cbec02ceef655
Content-Type: text/plain
Content-Transfer-Encoding: binary

Hello
--7a9cbec02ceef655
Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

<hex>""" + _BINARY + """</hex>
--7a9cbec02ceef655--
""", 405, "Allow"),
    # Responses to nothing of ours (a UAS has no such client transaction): dropped.
    Case("unreason", "3.1.1.12", """<allOneLine>
SIP/2.0 200 = 2**3 * 5**2 <hex>D0BDD0BE20D181D182D0BE20D0B4D0B5D0B2D18FD0BDD0BED181D182D0BE
20D0B4D0B5D0B2D18FD182D18C202D20D0BFD180D0BED181D182D0BED0B5</hex>
</allOneLine>
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""" + _sdp("192.0.2.198"), None),
    Case("noreason", "3.1.1.13", """SIP/2.0 100<hex>20</hex>
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""", None),
    # -- 3.1.2 invalid messages ----------------------------------------------------------
    Case("badinv01", "3.1.2.1", """INVITE sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=134161461246
Max-Forwards: 7
Call-ID: badinv01.0ha0isndaksdjasdf3234nas
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;;,;,,
Contact: "Joe" <sip:joe@example.org>;;;;
Content-Length: 152
Content-Type: application/sdp

""" + _sdp("192.0.2.15"), 400),
    # Over UDP, a Content-Length beyond the datagram: 400 (the RFC's "must").
    Case("clerr", "3.1.2.2", """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""" + _sdp("192.0.2.155"), 400, relength=False),
    Case("ncl", "3.1.2.3", """INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

""" + _sdp("192.0.2.53"), 400, relength=False),
    # CSeq over 2**32 (the Max-Forwards and expiry values would be forgivable alone).
    Case("scalar02", "3.1.2.4", """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
<allOneLine>
Expires: 1<repeat count=100>0</repeat>
</allOneLine>
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

""", 400),
    # A response with overlarge scalars: "simply discard it".
    Case("scalarlg", "3.1.2.5", """SIP/2.0 503 Service Unavailable
<allOneLine>
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
</allOneLine>
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

""", None),
    Case("quotbal", "3.1.2.6", """INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Type: application/sdp
Content-Length: 152

""" + _sdp("192.0.2.15"), 400),
    Case("ltgtruri", "3.1.2.7", """INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + _sdp("192.0.2.5").replace("t=0 0", "t=3149328700 0"), 400),
    Case("lwsruri", "3.1.2.8", """INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 159

""" + _sdp("192.0.2.1").replace("t=0 0", "t=3149328700 0"), 400),
    # Liberal: the extra SP between the request-line's elements is ignored.
    Case("lwsstart", "3.1.2.9", """INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Contact: <sip:caller@host1.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + _sdp("192.0.2.1"), 200, m_lines=2),
    # Liberal: SP after the SIP-Version ignored.
    Case("trws", "3.1.2.10", """OPTIONS sip:remote-target@example.com SIP/2.0<hex>2020</hex>
Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
Accept: application/sdp
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

""", 200),
    # Liberal: the escaped headers of the Request-URI are ignored (never acted on).
    Case("escruri", "3.1.2.11", """INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: 150

""" + _sdp("192.0.2.1"), 200, m_lines=2),
    # Liberal: the Date header field is never read, so its bad time zone does not matter.
    Case("baddate", "3.1.2.12", """INVITE sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:caller@host5.example.net>
Content-Type: application/sdp
Content-Length: 150

""" + _sdp("192.0.2.5"), 200, m_lines=2),
    # An addr-spec Contact with "?": the brackets can be inferred; REGISTER is not ours.
    Case("regbadct", "3.1.2.13", """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@10.0.0.1
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E
l: 0

""", 405, "Allow"),
    # Liberal: the spaces inside <> ignored.
    Case("badaspec", "3.1.2.14", """OPTIONS sip:user@example.org SIP/2.0
Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423
To: "Watson, Thomas" < sip:t.watson@example.org >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0

""", 200),
    # Liberal: the missing quotes of the display names inferred (From/To are single
    # headers, so the comma is not a list separator).
    Case("baddn", "3.1.2.15", """OPTIONS sip:t.watson@example.org SIP/2.0
Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards:      70
From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43
To:      Watson, Thomas <sip:t.watson@example.org>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq:    3923239 OPTIONS
l: 0

""", 200),
    Case("badvers", "3.1.2.16", """OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

""", 505),
    Case("mismatch01", "3.1.2.17", """OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

""", 400),
    # An unknown method: 501 (the RFC's better answer) before the CSeq mismatch's 400.
    Case("mismatch02", "3.1.2.18", """NEWMETHOD sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@host.example.net>
Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: 138

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.1
c=IN IP4 192.0.2.1
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""", 501, "Allow"),
    # A response with a 10-digit code: discarded, never read as 429.
    Case("bigcode", "3.1.2.19", """SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

""", None),
    # -- 3.2 transaction layer -----------------------------------------------------------
    # The magic cookie and nothing after it: matched RFC 2543-style, answered.
    Case("badbranch", "3.2.1", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
Accept: application/sdp
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
CSeq: 8 OPTIONS
l: 0

""", 200),
    # -- 3.3 application layer -----------------------------------------------------------
    Case("insuf", "3.3.1", """INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""" + _sdp("192.0.2.95"), 400),
    Case("unkscm", "3.3.2", """OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""", 416),
    Case("novelsc", "3.3.3", """OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

""", 416),
    Case("unksm2", "3.3.4", """REGISTER sip:example.com SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw
Contact: <name:John_Smith>
l: 0

""", 405, "Allow"),
    # Require is ours to honour (420 naming both); Proxy-Require is for proxies.
    Case("bext01", "3.3.5", """OPTIONS sip:user@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.net;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

""", 420, "Unsupported"),
    Case("invut", "3.3.6", """INVITE sip:user@example.com SIP/2.0
Contact: <sip:caller@host5.example.net>
To: sip:j.user@example.com
From: sip:caller@example.net;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: 40

<audio>
 <pcmu port="443"/>
</audio>
""", 415, "Accept"),
    Case("regaut01", "3.3.7", """REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=87321hj23128
Max-Forwards: 8
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length:0

""", 405, "Allow"),
    Case("multi01", "3.3.8", """INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Type: application/sdp
l: 154
Contact: <sip:caller@host36.example.net>
Max-Forwards: 5

""" + _sdp("192.0.2.25"), 400),
    Case("mcl01", "3.3.9", """OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
""", 400, relength=False),
    # A response with a broadcast Via: well-formed, matches nothing of ours: dropped (and
    # nothing is ever sent to 255.255.255.255: responses go to the packet's source).
    Case("bcast", "3.3.10", """SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host28.example.com>

""" + _sdp("192.0.2.198"), None),
    # Max-Forwards 0 at an endpoint: processed as usual (only a proxy answers 483).
    Case("zeromf", "3.3.11", """OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

""", 200),
    Case("cparam01", "3.3.12", """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 2 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

""", 405, "Allow"),
    Case("cparam02", "3.3.13", """REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

""", 405, "Allow"),
    Case("regescrt", "3.3.14", """REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.1
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
L:0

""", 405, "Allow"),
    # The caller cannot take the SDP we would answer with: 406.
    Case("sdp01", "3.3.15", """INVITE sip:user@example.com SIP/2.0
To: sip:j_user@example.com
Contact: <sip:caller@host15.example.net>
From: sip:caller@example.net;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyKnowsThis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Length: 150
Content-Type: application/sdp

""" + _sdp("192.0.2.5"), 406),
    # -- 3.4 backward compatibility ------------------------------------------------------
    # RFC 2543: no branch, no From tag, no Max-Forwards, no Content-Length (the body is
    # the rest of the datagram): a call, answered.
    Case("inv2543", "3.4.1", """INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
""", 200, m_lines=1, relength=False,
         subs={"<sip:UserB@example.com;maddr=ss1.example.com>": "<sip:UserB@127.0.0.1:{peer}>"}),
]  # fmt: skip

# 3.1.1.1 once more without its To tag: the whole tortuous INVITE taken as a new call.
_WSINV_NEW_CALL = CASES[0].text.replace(" ;   tag    = 1918181833n", "")
CASES.append(Case("wsinv (no To tag)", "3.1.1.1", _WSINV_NEW_CALL, 200, m_lines=2))


def _octets(text: str) -> bytes:
    """RFC 4475 section 2 notation to the octets on the wire (CRLF line ends)."""
    text = re.sub(r"<allOneLine>\n(.*?)\n</allOneLine>", lambda m: m.group(1).replace("\n", ""),
                  text, flags=re.S)  # fmt: skip
    text = re.sub(r"<repeat count=(\d+)>(.*?)</repeat>", lambda m: m.group(2) * int(m.group(1)),
                  text)  # fmt: skip
    data = text.replace("\n", "\r\n").encode()
    return re.sub(rb"<hex>([0-9A-Fa-f]*)</hex>", lambda m: bytes.fromhex(m.group(1).decode()),
                  data)  # fmt: skip


def retarget(case: Case, media_port: int, peer_port: int) -> bytes:
    """The case's message as sent here: unique Call-ID and tags, media and routes on
    loopback, Content-Length recomputed unless the case is about it."""
    data = _octets(case.text)
    for old, new in case.subs.items():
        data = data.replace(old.encode(), new.format(peer=peer_port).encode())
    unique = secrets.token_hex(4).encode()
    head, sep, body = data.partition(b"\r\n\r\n")
    head = re.sub(rb"(?im)^((?:call-id|i)\s*:\s*)([^\r\n]*)", rb"\1\2-" + unique, head)
    head = re.sub(rb"(?i)(;\s*tag\s*=\s*)([^;>\s,]+)", rb"\1\2-" + unique, head)
    body = re.sub(rb"c=IN IP4 [0-9.]+", b"c=IN IP4 127.0.0.1", body)
    body = re.sub(rb"m=audio [0-9]+", b"m=audio %d" % media_port, body)
    if case.relength:
        head = re.sub(rb"(?im)^((?:content-length|l)\s*:\s*)\d+(?=\r?$)",
                      rb"\g<1>%d" % len(body), head)  # fmt: skip
    return head + sep + body


def _status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def _to_tagged(data: bytes) -> bool:
    to = re.search(rb"(?im)^(?:to|t)\s*:(.*)$", data)
    return to is not None and tag_of(to.group(1).decode(errors="replace")) is not None


async def _final(peer: Peer, timeout: float = 2.0) -> bytes:
    """The next final response's octets (a 400 echoes what we sent, so it is not parsed)."""
    while True:
        data, _ = await asyncio.wait_for(peer.received.get(), timeout)
        if _status_of(data) >= 200:
            return data


def _discarded(gateway: SipGateway, kind: str) -> float:
    return gateway.manager.metrics.sip_discarded.labels(kind)._value.get()


async def _ack_and_bye(gateway: SipGateway, peer: Peer, ok: SipResponse) -> None:
    """End a call the set started: ACK its 200, then BYE (answered 200)."""
    number = int((ok.get("CSeq") or "1").split()[0])
    for method, cseq in (("ACK", number), ("BYE", number + 1)):
        message = (
            f"{method} sip:bot@127.0.0.1:{gateway.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
            f"Max-Forwards: 70\r\nFrom: {ok.get('From')}\r\nTo: {ok.get('To')}\r\n"
            f"Call-ID: {ok.call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
        peer.send(message.encode(), gateway.port)
    while True:  # past any retransmission of the 200 to the INVITE
        bye_ok = parse_message(await _final(peer))
        assert isinstance(bye_ok, SipResponse)
        if bye_ok.get("CSeq") == f"{number + 1} BYE":
            break
    assert bye_ok.status == 200, bye_ok


async def _run_case(gateway: SipGateway, peer: Peer, media: Peer, case: Case) -> None:
    what = f"{case.section} {case.name}"
    malformed = _discarded(gateway, "malformed")
    peer.send(retarget(case, media.port, peer.port), gateway.port)
    if case.status is None:
        await asyncio.sleep(0.3)
        assert not _drain(peer.received), f"{what}: answered"
        if case.name in ("unreason", "noreason", "bcast"):  # well-formed: parsed, ignored
            assert _discarded(gateway, "malformed") == malformed, f"{what}: not parsed"
        return
    data = await _final(peer)
    assert _status_of(data) == case.status, (what, data[:80])
    assert _to_tagged(data), f"{what}: final response without a To tag"
    if case.status == 400 or case.status == 505:
        return  # echoes the malformed headers: read as octets, not parsed
    response = parse_message(data)
    assert isinstance(response, SipResponse)
    if case.header is not None:
        assert response.get(case.header), f"{what}: no {case.header}"
    if case.name == "bext01":
        unsupported = {o.strip() for o in (response.get("Unsupported") or "").split(",")}
        assert unsupported == {"nothingSupportsThis", "nothingSupportsThisEither"}
    if case.m_lines is not None:  # a call: SDP answer, then the caller's ACK and BYE
        m_lines = [x for x in response.body.decode().splitlines() if x.startswith("m=")]
        assert len(m_lines) == case.m_lines, (what, m_lines)
        assert m_lines[0].startswith("m=audio ") and m_lines[0].split()[1] != "0"
        assert all(line.split()[1] == "0" for line in m_lines[1:]), (what, m_lines)
        await _ack_and_bye(gateway, peer, response)
    await asyncio.sleep(0.05)
    rest = [d for d, _ in _drain(peer.received) if not d.startswith(b"SIP/2.0 1") and d != data]
    assert not rest, f"{what}: more than one final response: {rest[0][:60]!r}"


def test_every_rfc4475_message_gets_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        # Admission by media load off: the set's calls come one at a time, and a busy
        # shared machine must not turn the answer this test checks into a 503.
        async with sip_gateway(overload_late_ratio=0, tick_budget=0) as gateway:
            peer, media = await _peer(), await _peer()
            for case in CASES:
                await _run_case(gateway, peer, media, case)
            for _ in range(100):  # every call the set made is over
                if not gateway.calls:
                    break
                await asyncio.sleep(0.02)
            assert not gateway.calls, list(gateway.calls)
            # And a normal call afterwards.
            caller = await _peer()
            caller.send(request("INVITE", gateway.port, caller, call_id="after-4475",
                                body=SDP.format(port=media.port)), gateway.port)  # fmt: skip
            ok = await caller.response()
            assert ok.status == 200
            await _ack_and_bye(gateway, caller, ok)
            for p in (peer, media, caller):
                p.transport.close()  # type: ignore[union-attr]

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_the_set_covers_rfc4475_section_3() -> None:
    """Every message of RFC 4475 section 3 is in the set, once (wsinv twice)."""
    names = (
        "wsinv intmeth esc01 escnull esc02 lwsdisp longreq dblreq semiuri transports mpart01 "
        "unreason noreason badinv01 clerr ncl scalar02 scalarlg quotbal ltgtruri lwsruri "
        "lwsstart trws escruri baddate regbadct badaspec baddn badvers mismatch01 mismatch02 "
        "bigcode badbranch insuf unkscm novelsc unksm2 bext01 invut regaut01 multi01 mcl01 "
        "bcast zeromf cparam01 cparam02 regescrt sdp01 inv2543"
    )
    expected = names.split(" ")
    assert [c.name for c in CASES[:-1]] == expected
    assert len(expected) == 49
