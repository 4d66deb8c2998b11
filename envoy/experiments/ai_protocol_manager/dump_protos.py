"""Prints the protos compiled into an Envoy binary (its embedded FileDescriptorProtos): the
messages, fields and enums, without comments. Usage: dump_protos.py ENVOY_BIN FILE.proto...
The binary is the ground truth when stored docs and protos are of another version."""
import sys, re
data = open(sys.argv[1],'rb').read()
names = sys.argv[2:]
def varint(b,i):
    r=0;s=0
    while True:
        c=b[i];i+=1;r|=(c&0x7f)<<s;s+=7
        if not c&0x80: return r,i
def fields(b):
    i=0;out=[]
    while i<len(b):
        t,i=varint(b,i);fn,wt=t>>3,t&7
        if wt==0: v,i=varint(b,i)
        elif wt==2:
            l,i=varint(b,i);v=b[i:i+l];i+=l
        elif wt==5: v=b[i:i+4];i+=4
        elif wt==1: v=b[i:i+8];i+=8
        else: raise ValueError('wt')
        out.append((fn,v))
    return out
TYPES={1:'double',2:'float',3:'int64',4:'uint64',5:'int32',8:'bool',9:'string',11:'msg',12:'bytes',13:'uint32',14:'enum'}
def enum(b,ind):
    f=fields(b);n=[v for k,v in f if k==1][0].decode()
    print(ind+'enum '+n+' {'+', '.join('%s=%d'%([x for k,x in fields(v) if k==1][0].decode(), dict(fields(v)).get(2,0)) for k,v in f if k==2)+'}')
def msg(b,ind):
    f=fields(b);n=[v for k,v in f if k==1][0].decode()
    print(ind+'message '+n+' {')
    oneofs=[ [x for kk,x in fields(v) if kk==1][0].decode() for k,v in f if k==8]
    for k,v in f:
        if k==2:
            d=dict(fields(v));
            t=TYPES.get(d.get(5),d.get(5));
            if 6 in d: t=d[6].decode()
            lab='repeated ' if d.get(4)==3 else ''
            oo=(' [oneof %s]'%oneofs[d[9]]) if 9 in d else ''
            print(ind+'  %s%s %s = %d;%s'%(lab,t,d[1].decode(),d[3],oo))
        elif k==3: msg(v,ind+'  ')
        elif k==4: enum(v,ind+'  ')
    print(ind+'}')
for name in names:
    nb=name.encode()
    for m in re.finditer(re.escape(b'\n'+bytes([len(nb)])+nb), data):
        st=m.start(); i=st; end=st
        # walk top-level fields while valid
        try:
            while True:
                t,j=varint(data,i);fn,wt=t>>3,t&7
                if fn not in (1,2,3,4,5,6,7,8,9,10,11,12,14) or wt not in (0,2): break
                if wt==2:
                    l,j=varint(data,j); j+=l
                else: _,j=varint(data,j)
                if j>len(data): break
                i=j;end=j
                if fn in (12,14): break
        except Exception: pass
        if end-st<100: continue
        fd=fields(data[st:end])
        print('=== file', name, 'bytes', end-st)
        for k,v in fd:
            if k==2: print('package', v.decode())
            if k==3: print('import', v.decode())
            if k==4: msg(v,'')
            if k==5: enum(v,'')
        break
